// Azure Service Bus for realtime-mirror: one Standard namespace, the topic
// `realtime-mirror` with duplicate detection, the subscriptions `sql-writer`
// and `monitoring` (each with its dead-letter queue), and data-plane role
// assignments for the services' managed identities.
//
// The adapter (crates/bus/src/servicebus) does not create entities; it
// verifies at start-up that these exist. Keep this file and terraform/ in step.
//
//   az deployment group create -g <rg> -f deploy/azure/servicebus.bicep \
//     -p namespaceName=<globally-unique-name> \
//        publisherPrincipalIds='["<object-id>"]' writerPrincipalIds='["<object-id>"]'

targetScope = 'resourceGroup'

@description('Service Bus namespace name (globally unique, 6-50 characters).')
@minLength(6)
@maxLength(50)
param namespaceName string

@description('Region of the namespace.')
param location string = resourceGroup().location

@description('The topic every producer publishes contract events to.')
param topicName string = 'realtime-mirror'

@description('Subscriptions require sessions (SessionId = partition key, per-key ordering). Must match the services\' SERVICEBUS_SESSIONS.')
param requiresSession bool = false

@description('How long the topic remembers MessageIds to drop duplicate publishes (ISO 8601, 20 s to 7 days).')
param duplicateDetectionWindow string = 'PT10M'

@description('Deliveries before Service Bus dead-letters a message itself (MaxDeliveryCountExceeded).')
@minValue(1)
param maxDeliveryCount int = 5

@description('Peek-lock duration. The sql-writer renews it every 10 s while it works on a message.')
param lockDuration string = 'PT1M'

@description('How long an undelivered message lives before it is dead-lettered (deadLetteringOnMessageExpiration).')
param messageTimeToLive string = 'P14D'

@description('Object (principal) ids of the publisher identities: Azure Service Bus Data Sender on the topic.')
param publisherPrincipalIds array = []

@description('Object (principal) ids of the sql-writer identities: Azure Service Bus Data Receiver on the sql-writer subscription.')
param writerPrincipalIds array = []

@description('Object (principal) ids of monitoring consumers: Azure Service Bus Data Receiver on the monitoring subscription.')
param monitoringPrincipalIds array = []

@description('Disable SAS keys so only Entra ID (managed identity) can connect.')
param disableLocalAuth bool = false

// Built-in roles (ids are the same in every tenant).
var dataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender
var dataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver

var subscriptionProperties = {
  lockDuration: lockDuration
  maxDeliveryCount: maxDeliveryCount
  requiresSession: requiresSession
  deadLetteringOnMessageExpiration: true
  deadLetteringOnFilterEvaluationExceptions: true
  defaultMessageTimeToLive: messageTimeToLive
  enableBatchedOperations: true
}

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: namespaceName
  location: location
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    minimumTlsVersion: '1.2'
    disableLocalAuth: disableLocalAuth
    publicNetworkAccess: 'Enabled'
  }
}

resource topic 'Microsoft.ServiceBus/namespaces/topics@2022-10-01-preview' = {
  parent: namespace
  name: topicName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    defaultMessageTimeToLive: messageTimeToLive
    supportOrdering: true
    enableBatchedOperations: true
    maxSizeInMegabytes: 5120
  }
}

resource sqlWriter 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2022-10-01-preview' = {
  parent: topic
  name: 'sql-writer'
  properties: subscriptionProperties
}

resource monitoring 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2022-10-01-preview' = {
  parent: topic
  name: 'monitoring'
  properties: subscriptionProperties
}

resource publisherSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in publisherPrincipalIds: {
  name: guid(topic.id, principalId, dataSenderRoleId)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSenderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource writerReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in writerPrincipalIds: {
  name: guid(sqlWriter.id, principalId, dataReceiverRoleId)
  scope: sqlWriter
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource monitoringReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in monitoringPrincipalIds: {
  name: guid(monitoring.id, principalId, dataReceiverRoleId)
  scope: monitoring
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

@description('SERVICEBUS_NAMESPACE for Entra ID auth.')
output namespace string = '${namespace.name}.servicebus.windows.net'

@description('The topic name (SERVICEBUS topic setting).')
output topic string = topic.name

@description('The subscription names.')
output subscriptions array = [sqlWriter.name, monitoring.name]
