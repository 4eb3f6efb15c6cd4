{
  "targets": [
    {
      "target_name": "vpm_native",
      "sources": ["src/addon.c", "src/checksum.c", "src/tun_napi.c", "src/tun_dev.c", "src/capture.c", "src/cred.c", "src/handover.c", "src/tun_inspect.c", "src/statemap.c"],
      "libraries": ["-lpcap"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"],
      "cflags_c": ["-std=gnu11"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
