"""adb devices: the transport (``adb``: sessions, shell, probe; ``transfer``: push/pull/remove),
running a pushed program there (``remote.DeviceRunner``), and parsing what LiteRT's Android
``benchmark_model`` prints (``benchmark_model``). Below ``validate``: it knows nothing of reports."""
