public enum _MQIStorePlaceholder {}
