output "namespace" {
  description = "SERVICEBUS_NAMESPACE for Entra ID auth."
  value       = "${azurerm_servicebus_namespace.mirror.name}.servicebus.windows.net"
}

output "topic" {
  description = "The topic name."
  value       = azurerm_servicebus_topic.mirror.name
}

output "subscriptions" {
  description = "The subscription names."
  value       = sort([for s in azurerm_servicebus_subscription.mirror : s.name])
}
