public enum _MQITestSupportPlaceholder {}
