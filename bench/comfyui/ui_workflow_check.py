"""Load our UI-format workflow into the real ComfyUI frontend (headless Chromium) and compare the
prompt the frontend builds from it with our API-format file."""
import json, sys
from playwright.sync_api import sync_playwright

ui = json.load(open(sys.argv[1]))
api = json.load(open(sys.argv[2]))
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1800, "height": 900})
    page.goto("http://127.0.0.1:8188", wait_until="networkidle")
    page.wait_for_function("window.app && window.app.graph", timeout=60000)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", ui)
    page.wait_for_timeout(1500)
    out = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    page.mouse.click(900, 600)
    page.keyboard.press(".")
    page.wait_for_timeout(800)
    page.screenshot(path=sys.argv[3])
    browser.close()
mine = {k: v["inputs"] for k, v in api.items()}
theirs = {k: v["inputs"] for k, v in out.items()}
print("frontend prompt == our API file:", mine == theirs)
if mine != theirs:
    for k in sorted(set(mine) | set(theirs)):
        if mine.get(k) != theirs.get(k):
            print(k, "ours:", mine.get(k), "\n   frontend:", theirs.get(k))
