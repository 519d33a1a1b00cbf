"""A real Apache Tomcat as the bot, for end-to-end tests: Debian's `tomcat10-common` (catalina.sh, no system
service) run as the test's own process on a free loopback port, serving a Teneo-engine-like webapp at `/bot`.

The webapp's JSPs take the session explicitly (`session="false"`, then `request.getSession(...)`), so only
`/engine` creates one:

- `/bot/engine` and `/bot/engine/*`: `{"status": 0, "sessionId", "turn", "output": {"text": "turn <n>"}}`, `turn`
  counting this session's answers. `?rotate=1` changes the session id first (`changeSessionId()`: same
  attributes, new id), `?end=1` invalidates after answering, `?redirect=1` redirects (302) to
  `<context>/engine?after=1` through `encodeRedirectURL`: Tomcat makes it absolute
  (`http://127.0.0.1:<port>/bot/engine?after=1`) and adds `;jsessionid=<id>` when the session is new and the
  request carried no cookie. `?redirect=path` sends the same target path-absolute (`/bot/engine?after=1`).
- `/bot/engine/endsession`: invalidates the session when there is one (never creates one) and answers
  `{"status": 1, "message": "logout", "invalidated": <bool>}`; `invalidated` tells Tomcat's answer apart from
  the gateway's own logout JSON.

Tomcat reads the session from the JSESSIONID cookie (scoped `Path=/bot`, the context path) or a `;jsessionid=`
path parameter. Its own idle expiry (30 minutes) never interferes with a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest_tools import unavailable
from gateway_helpers import free_port

CATALINA_HOME = Path("/usr/share/tomcat10")
CATALINA_SH = CATALINA_HOME / "bin" / "catalina.sh"
CONTEXT = "/bot"
HINT = "install the Debian package tomcat10-common (scripts/_system_packages.sh does, as root)"

SERVER_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- One HTTP connector on loopback; no shutdown port (the test stops Tomcat by SIGTERM), no AJP. -->
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector address="127.0.0.1" port="{port}" protocol="HTTP/1.1" connectionTimeout="20000"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
"""

# The global defaults every webapp inherits (Debian's conf/web.xml, cut to the two servlets it needs).
DEFAULT_WEB_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0">
  <servlet>
    <servlet-name>default</servlet-name>
    <servlet-class>org.apache.catalina.servlets.DefaultServlet</servlet-class>
    <init-param><param-name>listings</param-name><param-value>false</param-value></init-param>
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet>
    <servlet-name>jsp</servlet-name>
    <servlet-class>org.apache.jasper.servlet.JspServlet</servlet-class>
    <init-param><param-name>fork</param-name><param-value>false</param-value></init-param>
    <load-on-startup>3</load-on-startup>
  </servlet>
  <servlet-mapping><servlet-name>default</servlet-name><url-pattern>/</url-pattern></servlet-mapping>
  <servlet-mapping><servlet-name>jsp</servlet-name><url-pattern>*.jsp</url-pattern></servlet-mapping>
</web-app>
"""

# Absolute redirects, as Tomcat 9 sent them by default (10.1 sends path-absolute ones). Jar scanning for TLDs
# and fragments costs startup time and finds nothing in this webapp.
CONTEXT_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<Context useRelativeRedirects="false">
  <JarScanner scanClassPath="false" scanManifest="false"/>
</Context>
"""

LOGGING_PROPERTIES = """\
handlers = org.apache.juli.FileHandler
.handlers = org.apache.juli.FileHandler
.level = INFO
org.apache.juli.FileHandler.level = ALL
org.apache.juli.FileHandler.directory = ${catalina.base}/logs
org.apache.juli.FileHandler.prefix = catalina.
org.apache.juli.FileHandler.encoding = UTF-8
"""

# The JSPs are servlets with load-on-startup, so Tomcat compiles them before it answers the first request.
APP_WEB_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" metadata-complete="true">
  <servlet>
    <servlet-name>engine</servlet-name>
    <jsp-file>/WEB-INF/engine.jsp</jsp-file>
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet>
    <servlet-name>endsession</servlet-name>
    <jsp-file>/WEB-INF/endsession.jsp</jsp-file>
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet-mapping>
    <servlet-name>engine</servlet-name>
    <url-pattern>/engine</url-pattern>
    <url-pattern>/engine/*</url-pattern>
  </servlet-mapping>
  <servlet-mapping>
    <servlet-name>endsession</servlet-name>
    <url-pattern>/engine/endsession</url-pattern>
  </servlet-mapping>
  <session-config>
    <session-timeout>30</session-timeout>
  </session-config>
</web-app>
"""

ENGINE_JSP = """\
<%@ page session="false" contentType="application/json; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  jakarta.servlet.http.HttpSession conversation = request.getSession(true);
  String redirect = request.getParameter("redirect");
  if (redirect != null) {
    String target = response.encodeRedirectURL(request.getContextPath() + "/engine?after=1");
    if (redirect.equals("path")) {
      response.setStatus(302);
      response.setHeader("Location", target);
    } else {
      response.sendRedirect(target);
    }
    return;
  }
  if (request.getParameter("rotate") != null) {
    request.changeSessionId();
  }
  Integer previous = (Integer) conversation.getAttribute("turn");
  int turn = previous == null ? 1 : previous + 1;
  conversation.setAttribute("turn", turn);
  String id = conversation.getId();
  if (request.getParameter("end") != null) {
    conversation.invalidate();
  }
  out.print("{\\"status\\":0,\\"sessionId\\":\\"" + id + "\\",\\"turn\\":" + turn
      + ",\\"output\\":{\\"text\\":\\"turn " + turn + "\\"}}");
%>
"""

ENDSESSION_JSP = """\
<%@ page session="false" contentType="application/json; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  jakarta.servlet.http.HttpSession conversation = request.getSession(false);
  if (conversation != null) {
    conversation.invalidate();
  }
  out.print("{\\"status\\":1,\\"message\\":\\"logout\\",\\"invalidated\\":" + (conversation != null) + "}");
%>
"""


def require_tomcat() -> None:
    """Skip (fail under CI=true) without catalina.sh or a java to run it."""
    if not CATALINA_SH.is_file():
        unavailable(f"Apache Tomcat ({CATALINA_SH})", HINT)
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        unavailable("java (a JRE 11+ for Tomcat 10)", HINT)


def write_base(base: Path, port: int) -> None:
    """A CATALINA_BASE: conf/ for one connector on `port`, the webapp at webapps/bot, logs/, temp/, work/."""
    files = {
        "conf/server.xml": SERVER_XML.format(port=port),
        "conf/web.xml": DEFAULT_WEB_XML,
        "conf/context.xml": CONTEXT_XML,
        "conf/logging.properties": LOGGING_PROPERTIES,
        "webapps/bot/WEB-INF/web.xml": APP_WEB_XML,
        "webapps/bot/WEB-INF/engine.jsp": ENGINE_JSP,
        "webapps/bot/WEB-INF/endsession.jsp": ENDSESSION_JSP,
    }
    for name in ("logs", "temp", "work"):
        (base / name).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


class TomcatServer:
    """`catalina.sh run` in the foreground on a free loopback port, with its own CATALINA_BASE."""

    def __init__(self, base: Path) -> None:
        require_tomcat()
        self.base = base
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        write_base(base, self.port)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The bot's base URL: upstream.url for the gateway."""
        return self.origin + CONTEXT

    def logs(self) -> str:
        """Everything Tomcat logged (its log files and its console), for failure messages."""
        parts = []
        for path in sorted((self.base / "logs").iterdir()):
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-4000:]}")
        return "\n".join(parts)

    def start(self, timeout: float = 60.0) -> None:
        """Start Tomcat and wait until the webapp answers (its JSPs compiled at startup)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALINA_", "JAVA_OPTS", "JPDA_"))}
        env.update(
            CATALINA_HOME=str(CATALINA_HOME),
            CATALINA_BASE=str(self.base),
            CATALINA_TMPDIR=str(self.base / "temp"),
            # A short-lived test server: the client JIT starts faster and is plenty for a few hundred requests.
            JAVA_OPTS="-XX:TieredStopAtLevel=1 -Xshare:auto -Djava.security.egd=file:/dev/urandom",
        )
        with open(self.base / "logs" / "console.log", "wb") as console:
            self.process = subprocess.Popen(
                [str(CATALINA_SH), "run"],  # catalina.sh execs java: SIGTERM reaches the JVM
                env=env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"Tomcat exited with {self.process.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Tomcat did not answer within {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        # endsession never creates a session; 200 means the connector, the context and the JSPs are up
        try:
            with urllib.request.urlopen(f"{self.url}/engine/endsession", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the JVM's shutdown hook stops Catalina), SIGKILL after `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.process = None


@contextlib.contextmanager
def running_tomcat(base: Path) -> Iterator[TomcatServer]:
    """A started TomcatServer in `base`, stopped on exit (skips without Tomcat, fails under CI=true)."""
    server = TomcatServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
