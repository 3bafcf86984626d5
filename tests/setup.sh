#!/usr/bin/env bash
# Installs the third-party clients and servers the integration tests drive.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need_apt=()
command -v fetchmail >/dev/null || need_apt+=(fetchmail)
command -v swaks >/dev/null || need_apt+=(swaks)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v mkpasswd >/dev/null || need_apt+=(whois)
command -v strace >/dev/null || need_apt+=(strace)
command -v ip >/dev/null || need_apt+=(iproute2)
[ -x /usr/sbin/dovecot ] || need_apt+=(dovecot-pop3d)
# The IMAP store's interop tests have Dovecot serve (and write) Maildirs.
[ -x /usr/lib/dovecot/imap ] || need_apt+=(dovecot-imapd)
# The power-cut filesystem (tests/powercut_fs.py): fusepy loads libfuse 2.
ldconfig -p | grep "libfuse\.so\.2" >/dev/null || need_apt+=(libfuse2)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts the packaged dovecot; tests run their own instances.
  (systemctl disable --now dovecot 2>/dev/null || service dovecot stop 2>/dev/null || true) >/dev/null
fi

PY=${PYTHON:-python3}
need_pip=()
for mod in pytest xdist aiosmtpd dnslib dkim nacl fuse; do
  "$PY" -c "import $mod" 2>/dev/null || need_pip+=("$mod")
done
if [ ${#need_pip[@]} -gt 0 ]; then
  pkgs=()
  for m in "${need_pip[@]}"; do
    case $m in
      xdist) pkgs+=(pytest-xdist) ;;
      dkim) pkgs+=(dkimpy) ;;
      nacl) pkgs+=(pynacl) ;;
      fuse) pkgs+=(fusepy) ;;
      *) pkgs+=("$m") ;;
    esac
  done
  echo "installing python packages: ${pkgs[*]}"
  "$PY" -m pip install -q "${pkgs[@]}"
fi
