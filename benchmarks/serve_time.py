"""The web page's time from upload to overlay: `covfast serve RUN` driven by headless Chromium.

    python benchmarks/serve_time.py RUN XRAY [--repeats 5] [--screenshot docs/serve.png]

Starts the page on a free local port, then `--repeats` times: reloads it, drops XRAY on it, and times from
the upload to the overlay and the figures on the page. Prints each time and their median; `--screenshot`
saves the page after the last upload (1200 px wide).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import time

from playwright.sync_api import sync_playwright

from covfast.serve import serve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("xray")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--screenshot")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = serve(args.run, port=port, block=False)
    times = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            for _ in range(args.repeats):
                tab.goto(f"http://127.0.0.1:{port}")
                tab.wait_for_selector("#xray input[type=file]", state="attached", timeout=60000)
                t = time.perf_counter()
                tab.set_input_files("#xray input[type=file]", args.xray)
                tab.wait_for_function("document.querySelector('#said').innerText.includes('Infected pixels')", timeout=120000)
                tab.wait_for_selector("#overlay img", timeout=60000)
                times.append(time.perf_counter() - t)
                print(f"upload to overlay: {times[-1]:.2f} s", flush=True)
            if args.screenshot:
                # Gradio fades the outputs while a request is pending: wait until none is, then for the fade-in
                tab.wait_for_function("!document.querySelector('.pending, .generating')", timeout=60000)
                tab.wait_for_timeout(1000)
                tab.screenshot(path=args.screenshot, full_page=True)
            browser.close()
    finally:
        page.close()
    print(f"median of {len(times)}: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
