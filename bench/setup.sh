#!/usr/bin/env bash
# Installs what `make bench` drives beside mailgate: Postfix (the peer for
# SMTP intake, and its smtp-source load generator) and Dovecot (the peer
# for POP3). Idempotent: does nothing when everything is already there.
#
# The bench runs its own private instances on loopback ports. The packaged
# ones must never run: a system Postfix on port 25 would break the outbox
# tests that bind 127.x.y.z:25, and the tests must never hand mail to it.
# So Postfix is installed with debconf's "No configuration" (no main.cf, no
# /etc/mailname, nothing started) and, while apt runs, a policy-rc.d that
# forbids starting any service; afterwards both packaged services are
# stopped and disabled in case something started them anyway.
set -euo pipefail

need_apt=()
[ -x /usr/sbin/postfix ] || need_apt+=(postfix)
[ -x /usr/sbin/smtp-source ] || need_apt+=(postfix)
[ -x /usr/sbin/dovecot ] || need_apt+=(dovecot-pop3d)
# The IMAP figures run Dovecot's imap beside mailgate's.
[ -x /usr/lib/dovecot/imap ] || need_apt+=(dovecot-imapd)
if [ ${#need_apt[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  need_apt=($(printf '%s\n' "${need_apt[@]}" | sort -u))
  echo "bench: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\n# made by mailgate bench/setup.sh for one apt-get run\nexit 101\n' >$policy
    chmod 0755 $policy
    made_policy=1
  fi
  trap '[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Belt and braces: whatever apt did, no packaged Postfix or Dovecot runs.
for svc in postfix dovecot; do
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
if [ -f /etc/postfix/main.cf ] && /usr/sbin/postfix status >/dev/null 2>&1; then
  /usr/sbin/postfix stop >/dev/null 2>&1 || true
fi
