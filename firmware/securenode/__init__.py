# SecureNode firmware: a MicroPython sensor node that talks only to peers it can verify.
VERSION = "0.1.0"
