#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are present for
# tests/test_postgres_workers.py, which starts its own private server on 127.0.0.1 in a temp
# dir. Installs Debian's `postgresql` package only when initdb is missing; never creates the
# default cluster and never starts a service (the test starts and stops its own server).
# Run as root (CI). Exit 0 when the binaries are there.
set -euo pipefail

have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if have_initdb; then
    echo "postgres.sh: PostgreSQL server binaries present: $(command -v initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -n 1)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "postgres.sh: initdb not found and not running as root; install the 'postgresql' package" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# No default cluster (/var/lib/postgresql/N/main) and no service start during the install.
mkdir -p /etc/postgresql-common
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
policy_added=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
fi
trap 'if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends postgresql

if ! have_initdb; then
    echo "postgres.sh: 'postgresql' installed but initdb still not found" >&2
    exit 1
fi
id postgres >/dev/null  # the package creates the system user the server runs as
echo "postgres.sh: installed $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -n 1)"
exit 0
