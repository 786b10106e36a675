variable "resource_group_name" {
  description = "Resource group that holds the namespace."
  type        = string
}

variable "location" {
  description = "Region of the namespace."
  type        = string
}

variable "namespace_name" {
  description = "Service Bus namespace name (globally unique, 6-50 characters)."
  type        = string
}

variable "topic_name" {
  description = "The topic every producer publishes contract events to."
  type        = string
  default     = "realtime-mirror"
}

variable "requires_session" {
  description = "Subscriptions require sessions (SessionId = partition key). Must match the services' SERVICEBUS_SESSIONS."
  type        = bool
  default     = false
}

variable "duplicate_detection_window" {
  description = "How long the topic remembers MessageIds to drop duplicate publishes (ISO 8601)."
  type        = string
  default     = "PT10M"
}

variable "max_delivery_count" {
  description = "Deliveries before Service Bus dead-letters a message itself (MaxDeliveryCountExceeded)."
  type        = number
  default     = 5
}

variable "lock_duration" {
  description = "Peek-lock duration. The sql-writer renews it every 10 s while it works on a message."
  type        = string
  default     = "PT1M"
}

variable "message_ttl" {
  description = "How long an undelivered message lives before it is dead-lettered."
  type        = string
  default     = "P14D"
}

variable "publisher_principal_ids" {
  description = "Object ids of the publisher identities: Azure Service Bus Data Sender on the topic."
  type        = list(string)
  default     = []
}

variable "writer_principal_ids" {
  description = "Object ids of the sql-writer identities: Azure Service Bus Data Receiver on the sql-writer subscription."
  type        = list(string)
  default     = []
}

variable "monitoring_principal_ids" {
  description = "Object ids of monitoring consumers: Azure Service Bus Data Receiver on the monitoring subscription."
  type        = list(string)
  default     = []
}

variable "local_auth_enabled" {
  description = "Allow SAS keys; set false so only Entra ID (managed identity) can connect."
  type        = bool
  default     = true
}
