public enum _MQITransportPlaceholder {}
