# Azure Service Bus for realtime-mirror, the Terraform twin of ../servicebus.bicep:
# a Standard namespace, the topic with duplicate detection, the `sql-writer`
# and `monitoring` subscriptions (each with its dead-letter queue), and
# data-plane role assignments for the services' managed identities.
# The adapter (crates/bus/src/servicebus) verifies these at start-up; it
# never creates them.

provider "azurerm" {
  features {}
}

data "azurerm_subscription" "current" {}

locals {
  # Built-in roles (ids are the same in every tenant).
  data_sender_role   = "${data.azurerm_subscription.current.id}/providers/Microsoft.Authorization/roleDefinitions/69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
  data_receiver_role = "${data.azurerm_subscription.current.id}/providers/Microsoft.Authorization/roleDefinitions/4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
  subscriptions      = toset(["sql-writer", "monitoring"])
}

resource "azurerm_servicebus_namespace" "mirror" {
  name                          = var.namespace_name
  location                      = var.location
  resource_group_name           = var.resource_group_name
  sku                           = "Standard"
  minimum_tls_version           = "1.2"
  local_auth_enabled            = var.local_auth_enabled
  public_network_access_enabled = true
}

resource "azurerm_servicebus_topic" "mirror" {
  name                                    = var.topic_name
  namespace_id                            = azurerm_servicebus_namespace.mirror.id
  requires_duplicate_detection            = true
  duplicate_detection_history_time_window = var.duplicate_detection_window
  default_message_ttl                     = var.message_ttl
  support_ordering                        = true
  max_size_in_megabytes                   = 5120
}

resource "azurerm_servicebus_subscription" "mirror" {
  for_each = local.subscriptions

  name                                      = each.key
  topic_id                                  = azurerm_servicebus_topic.mirror.id
  max_delivery_count                        = var.max_delivery_count
  lock_duration                             = var.lock_duration
  requires_session                          = var.requires_session
  default_message_ttl                       = var.message_ttl
  dead_lettering_on_message_expiration      = true
  dead_lettering_on_filter_evaluation_error = true
}

resource "azurerm_role_assignment" "publisher_sender" {
  for_each = toset(var.publisher_principal_ids)

  scope              = azurerm_servicebus_topic.mirror.id
  role_definition_id = local.data_sender_role
  principal_id       = each.value
  principal_type     = "ServicePrincipal"
}

resource "azurerm_role_assignment" "writer_receiver" {
  for_each = toset(var.writer_principal_ids)

  scope              = azurerm_servicebus_subscription.mirror["sql-writer"].id
  role_definition_id = local.data_receiver_role
  principal_id       = each.value
  principal_type     = "ServicePrincipal"
}

resource "azurerm_role_assignment" "monitoring_receiver" {
  for_each = toset(var.monitoring_principal_ids)

  scope              = azurerm_servicebus_subscription.mirror["monitoring"].id
  role_definition_id = local.data_receiver_role
  principal_id       = each.value
  principal_type     = "ServicePrincipal"
}
