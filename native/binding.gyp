{
  "targets": [
    {
      "target_name": "gcm",
      "sources": ["gcm.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      # Bind every symbol at load: an OpenSSL function missing from this node fails the require
      # (and skymesh falls back to node:crypto) instead of killing the process at its first call
      "ldflags": ["-Wl,-z,now"]
    }
  ]
}
