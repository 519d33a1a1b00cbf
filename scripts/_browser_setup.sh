# Sourced (or run) by the test command: install Debian's Chromium for the browser tests when it is missing.
# Only as root (CI and fresh machines); a no-op when /usr/bin/chromium exists or we are not root, in which
# case tests/test_browser.py skips with a reason (and fails under CI=true).
# Playwright drives this Chromium (executable_path=/usr/bin/chromium); it never downloads a browser of its own.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ]; then
  echo "installing Debian's chromium for the browser tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
fi
