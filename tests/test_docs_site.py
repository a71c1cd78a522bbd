"""The documentation site and the Snakemake HTML report in a real headless browser (Debian's
chromium and chromium-driver through selenium; .ci/run installs them): the site is built the way
`make docs` builds it (reference pages generated from the code, `mkdocs build --strict`), served
over HTTP, and every page must load with every image decoded (naturalWidth > 0), every link
inside the site must lead to a page, and the browser's console must hold no error. The smoke
study's `snakemake --report` is opened the same way, each plot shown. Screenshots stay under the
test's tmp_path."""
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.slow


def _need_browser():
    if CHROMIUM and CHROMEDRIVER:
        return
    reason = "chromium and chromium-driver are not installed (bash .ci/install-chromium.sh, as root)"
    if os.environ.get("CI"):
        pytest.fail(reason + ": .ci/run installs them")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def serve():
    """serve(folder) -> its base URL on localhost, until the module's tests end."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):   # a page the browser left mid-transfer
            pass

    def start(folder: Path) -> str:
        server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()


def build_site(dest: Path) -> Path:
    """`make docs` in a copy: the reference pages generated from the code, then a strict build."""
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns("reference"))
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    for command in ([str(BIN / "python"), str(ROOT / "scripts" / "gen_docs.py"), "--out", str(dest / "docs" / "reference")],
                    [str(BIN / "mkdocs"), "build", "--strict"]):
        run = subprocess.run(command, cwd=dest, capture_output=True, text=True,
                             env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
        assert run.returncode == 0, f"{' '.join(command)}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    return dest / "site"


def images(driver) -> list[dict]:
    """Every <img> of the page, each scrolled into view, once the page has stopped loading them."""
    script = """return [...document.images].map(i => { i.scrollIntoView(); return {
        src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth}; });"""
    deadline = time.monotonic() + 10
    found = driver.execute_script(script)
    while any(not i["complete"] for i in found) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = driver.execute_script(script)
    return found


def severe(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def check_page(driver, url: str, shot: Path) -> dict:
    """Open a page; what is wrong with it (broken images, console errors), and its links."""
    driver.get(url)
    found = images(driver)
    problems = [f"{url}: image not loaded: {i['src'][:120]}" for i in found if not (i["complete"] and i["width"] > 0)]
    problems += [f"{url}: console error: {message[:300]}" for message in severe(driver)]
    if driver.title.startswith("404"):
        problems.append(f"{url}: the site's 404 page")
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(shot))
    links = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    return {"problems": problems, "images": len(found), "links": links}


def check_site(driver, base: str, pages: list[str], shots: Path) -> tuple[list[str], dict]:
    """Every page and every link inside the site; returns the problems and each page's image count."""
    problems, counts, targets = [], {}, set()
    for page in pages:
        result = check_page(driver, urljoin(base, page), shots / (page.replace("/", "__") + ".png"))
        problems += result["problems"]
        counts[page] = result["images"]
        for link in result["links"]:
            parts = urlsplit(link)
            if link.startswith(base):
                targets.add(urlunsplit(parts._replace(fragment="")))
    for target in sorted(targets):
        try:
            urllib.request.urlopen(target, timeout=10).close()
        except urllib.error.HTTPError as err:
            problems.append(f"{target}: HTTP {err.code} (a link inside the site leads nowhere)")
    return problems, counts


def site_pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html")
                  if p.name != "404.html" and p.relative_to(site).parts[0] not in ("search", "assets"))


def test_the_checker_sees_a_broken_image_and_a_broken_link(browser, serve, tmp_path):
    """The check below can fail: a page with an image and a link that lead nowhere is caught."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "page.html").write_text('<html><head><title>broken</title></head><body>'
                                      '<img src="missing.png"><a href="gone.html">gone</a></body></html>')
    problems, _ = check_site(browser, serve(folder), ["page.html"], tmp_path / "shots")
    assert any("image not loaded" in p and "missing.png" in p for p in problems), problems
    assert any("gone.html: HTTP 404" in p for p in problems), problems


def test_every_page_of_the_site_renders_with_its_images(browser, serve, tmp_path):
    site = build_site(tmp_path)
    pages = site_pages(site)
    expected = {"index.html", "getting-started.html", "data.html", "detectors.html", "methods.html", "studies.html",
                "statistics.html", "peers.html", "cluster.html", "reproducibility.html", "troubleshooting.html",
                "results.html", "reference/methods.html", "reference/detectors.html", "reference/cli.html",
                "reference/params.html", "reference/corruptions.html"}
    assert expected <= set(pages), expected - set(pages)
    problems, counts = check_site(browser, serve(site), pages, tmp_path / "screenshots")
    assert not problems, "\n".join(problems)
    assert counts["reference/corruptions.html"] >= 1   # the figure the docs build draws was decoded
    assert all((tmp_path / "screenshots" / (p.replace("/", "__") + ".png")).stat().st_size > 10_000 for p in pages)


def test_the_snakemake_report_shows_every_plot(browser, smoke_study, tmp_path):
    from selenium.webdriver.common.by import By

    report = tmp_path / "report.html"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "QUANTDET_TRACKING": "off"}
    run = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(smoke_study),
                          "--report", str(report)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    # opened as a user opens it, from the file (over HTTP the browser would also ask for a favicon)
    result = check_page(browser, report.as_uri(), tmp_path / "screenshots" / "report.png")
    assert not result["problems"], result["problems"]
    browser.find_element(By.LINK_TEXT, "Plots").click()
    plots = [row for row in browser.find_elements(By.CSS_SELECTOR, "table tbody tr") if row.text.endswith(".png")]
    names = {Path(row.text.strip()).name for row in plots}
    assert {"ap_vs_severity.png", "rpc_per_model.png", "accuracy_vs_robustness.png", "ap_per_corruption.png"} <= names
    for index in range(len(plots)):
        row = browser.find_elements(By.CSS_SELECTOR, "table tbody tr")[index]
        name = Path(row.text.strip()).name
        row.find_element(By.CSS_SELECTOR, "a[iconname=eye]").click()
        shown = [i for i in images(browser) if f"filename={name}" in i["src"]]
        assert shown and all(i["complete"] and i["width"] > 0 for i in shown), (name, shown)
        browser.save_screenshot(str(tmp_path / "screenshots" / f"report__{name}"))
    assert not severe(browser)
