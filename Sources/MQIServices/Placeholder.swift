public enum _MQIServicesPlaceholder {}
