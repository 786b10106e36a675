// Azure Monitor alerts of the plan (docs/runbook.md answers each one).
//
// - Service Bus platform metrics (no agent needed): backlog and dead letters
//   of the `realtime-mirror` topic.
// - Prometheus rule group for Azure Monitor managed Prometheus, which scrapes
//   the jobs' /metrics (AKS: the ama-metrics add-on with the pod annotations
//   in deploy/k8s; Container Apps: an OpenTelemetry Collector remote-writing to
//   the workspace). Same expressions as deploy/monitoring/prometheus-rules.yml.
//
// az deployment group create -g realtime-mirror -f deploy/azure/alerts.bicep \
//   -p serviceBusNamespaceName=realtime-mirror-prod monitorWorkspaceName=realtime-mirror actionGroupId=<id>

@description('Service Bus namespace holding the realtime-mirror topic')
param serviceBusNamespaceName string

@description('Topic name (the Rust constant mirror_bus::TOPIC)')
param topicName string = 'realtime-mirror'

@description('Azure Monitor workspace (managed Prometheus) the jobs report to')
param monitorWorkspaceName string

@description('Action group notified by every alert')
param actionGroupId string

param location string = resourceGroup().location

@description('Backlog alert threshold (events waiting in the topic)')
param backlogThreshold int = 1000

@description('Dead-letter alert threshold')
param deadLetterThreshold int = 10

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource workspace 'Microsoft.Monitor/accounts@2023-04-03' existing = {
  name: monitorWorkspaceName
}

resource backlog 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'realtime-mirror-backlog'
  location: 'global'
  properties: {
    description: 'More than ${backlogThreshold} active messages in ${topicName} for 5 minutes (runbook: backlog over 1000)'
    severity: 2
    enabled: true
    scopes: [
      namespace.id
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'ActiveMessages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'ActiveMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                topicName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: backlogThreshold
          timeAggregation: 'Average'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroupId
      }
    ]
  }
}

resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'realtime-mirror-dead-letters'
  location: 'global'
  properties: {
    description: 'More than ${deadLetterThreshold} dead-lettered messages in ${topicName} (runbook: dead letters over 10)'
    severity: 2
    enabled: true
    scopes: [
      namespace.id
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'DeadletteredMessages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                topicName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: deadLetterThreshold
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroupId
      }
    ]
  }
}

resource appRules 'Microsoft.AlertsManagement/prometheusRuleGroups@2023-03-01' = {
  name: 'realtime-mirror'
  location: location
  properties: {
    description: 'realtime-mirror job metrics (docs/metrics.md)'
    enabled: true
    scopes: [
      workspace.id
    ]
    interval: 'PT1M'
    rules: [
      {
        alert: 'MirrorSqlDeadLetterInserted'
        expression: 'sum(increase(mirror_dead_letter_sql_inserts_total[10m])) > 0'
        severity: 2
        enabled: true
        annotations: {
          runbook: 'docs/runbook.md#sql-dead-letter-inserts'
        }
        actions: [
          {
            actionGroupId: actionGroupId
          }
        ]
      }
      {
        alert: 'MirrorDriftHigh'
        expression: 'max(last_over_time(mirror_consistency_drift_percent{scope="full"}[26h])) > 0.5'
        severity: 1
        enabled: true
        annotations: {
          runbook: 'docs/runbook.md#drift-over-05'
        }
        actions: [
          {
            actionGroupId: actionGroupId
          }
        ]
      }
      {
        alert: 'MirrorConsistencyNotRun'
        expression: 'time() - max(last_over_time(mirror_consistency_last_run_timestamp_seconds{scope="full"}[7d])) > 93600'
        severity: 2
        enabled: true
        annotations: {
          runbook: 'docs/runbook.md#drift-over-05'
        }
        actions: [
          {
            actionGroupId: actionGroupId
          }
        ]
      }
      {
        alert: 'MirrorLatencyP95High'
        expression: 'histogram_quantile(0.95, sum by (le) (rate(sql_mirror_latency_ms_bucket[5m]))) > 250'
        for: 'PT15M'
        severity: 2
        enabled: true
        annotations: {
          runbook: 'docs/runbook.md#p95-latency-over-250-ms'
        }
        actions: [
          {
            actionGroupId: actionGroupId
          }
        ]
      }
      {
        alert: 'MirrorPublisherCheckpointStale'
        expression: 'max by (shard) (mirror_publisher_checkpoint_age_seconds) > 1500'
        severity: 1
        enabled: true
        annotations: {
          runbook: 'docs/runbook.md#publisher-checkpoint-age-over-25-min'
        }
        actions: [
          {
            actionGroupId: actionGroupId
          }
        ]
      }
      {
        alert: 'MirrorDeadLettersHigh'
        expression: 'max by (subscription) (mirror_dead_letter_queue_messages) > 10'
        severity: 2
        enabled: true
        annotations: {
          runbook: 'docs/runbook.md#dead-letters-over-10'
        }
        actions: [
          {
            actionGroupId: actionGroupId
          }
        ]
      }
    ]
  }
}

output alertIds array = [
  backlog.id
  deadLetters.id
  appRules.id
]
