#!/usr/bin/env bash
# Installs what building and testing Baton needs on Debian (run as root).
# Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v clang-19 >/dev/null || [ -n "${CLANG:-}" ] || need_apt+=(clang-19 llvm-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# The real-node rig (e2e/node/rig.sh) and its images (e2e/images/build.sh).
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v socat >/dev/null || need_apt+=(socat)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v bpftool >/dev/null || need_apt+=(bpftool)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo ">> apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && export PATH="$d:$PATH"
  done
fi
if ! command -v cargo >/dev/null; then
  echo "missing: a Rust toolchain >= 1.87 (cargo, rustc). Debian's rustc is too old; install one with rustup." >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  echo "Baton loads eBPF programs and creates cgroups: run as root." >&2
  exit 1
fi
if [ ! -e /sys/kernel/btf/vmlinux ]; then
  echo "warning: kernel has no BTF at /sys/kernel/btf/vmlinux" >&2
fi
