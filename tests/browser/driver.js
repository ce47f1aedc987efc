#!/usr/bin/env node
// Drives headless Chromium with playwright-core for kanal's browser tests (tests/browser).
//
// Newline-delimited JSON on stdin and stdout; console output goes to stderr. Every command
// {"id","cmd",...} is answered once, when done: {"id","ok":true,"result"} or
// {"id","ok":false,"error"}. Besides answers the driver writes {"event":"ready"} once, and
// {"event":"console","page","text"} for each console message and uncaught error of a page.
// Commands ("page" is an id from new_page):
//   launch {executablePath,args}           -> {version}     once, before anything else
//   new_page {url,width,height,mobile}     -> {page}        a new context: its own cookies
//   goto {page,url}   close_page {page}    fill / type (appends) {page,selector,text}
//   press {page,selector,key}   click {page,selector}   screenshot {page,path,fullPage}
//   wait_for_text / wait_for_no_text {page,selector,text,timeoutMs}
//   texts {page,selector} -> [innerText of each visible match]   evaluate {page,expression}
//   close                                  closes the browser, then the driver exits
'use strict';

const readline = require('readline');
const { chromium } = require('playwright-core');

for (const name of ['log', 'info', 'warn', 'error', 'debug']) {
  console[name] = (...args) => process.stderr.write(`[driver ${name}] ${args.join(' ')}\n`);
}

const ACTION_TIMEOUT_MS = 10000; // click, fill, ...: an element that never shows up fails
let browser = null;
const pages = new Map(); // id -> playwright Page
let nextPage = 1;

function write(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

function need(cmd, field) {
  if (cmd[field] === undefined || cmd[field] === null) throw new Error(`'${field}' is required`);
  return cmd[field];
}

function page(cmd) {
  const found = pages.get(need(cmd, 'page'));
  if (!found) throw new Error(`no open page ${JSON.stringify(cmd.page)}`);
  return found;
}

// innerText of every visible element matching selector: what the user sees. (A hidden
// element's innerText is its whole textContent, so hidden ones must be left out.)
function texts(selector) {
  return [...document.querySelectorAll(selector)]
    .filter((element) => element.checkVisibility())
    .map((element) => element.innerText);
}

async function waitForText(cmd, present) {
  const target = page(cmd);
  const selector = need(cmd, 'selector');
  const text = need(cmd, 'text');
  const holds = ([sel, wanted, want]) => {
    const shown = (e) => e.checkVisibility() && e.innerText.includes(wanted);
    return [...document.querySelectorAll(sel)].some(shown) === want;
  };
  try {
    await target.waitForFunction(holds, [selector, text, present], { timeout: need(cmd, 'timeoutMs') });
  } catch (err) {
    if (err.name !== 'TimeoutError') throw err;
    const seen = await target.evaluate(texts, selector);
    const what = present ? 'no' : 'still a';
    throw new Error(`${what} visible element matching ${JSON.stringify(selector)} shows ` +
      `${JSON.stringify(text)} after ${cmd.timeoutMs} ms; visible matches: ${JSON.stringify(seen)}`);
  }
}

const commands = {
  async launch(cmd) {
    if (browser) throw new Error('already launched');
    browser = await chromium.launch({
      executablePath: need(cmd, 'executablePath'),
      args: need(cmd, 'args'),
      headless: true,
    });
    return { version: browser.version() };
  },

  async new_page(cmd) {
    if (!browser) throw new Error('launch first');
    const mobile = Boolean(cmd.mobile);
    const context = await browser.newContext({
      viewport: { width: cmd.width || 1000, height: cmd.height || 700 },
      deviceScaleFactor: mobile ? 2 : 1,
      isMobile: mobile,
      hasTouch: mobile,
    });
    context.setDefaultTimeout(ACTION_TIMEOUT_MS);
    const opened = await context.newPage();
    const id = nextPage++;
    pages.set(id, opened);
    opened.on('console', (m) => write({ event: 'console', page: id, text: `${m.type()}: ${m.text()}` }));
    opened.on('pageerror', (e) => write({ event: 'console', page: id, text: `uncaught: ${e.message}` }));
    await opened.goto(need(cmd, 'url'));
    return { page: id };
  },

  async goto(cmd) { await page(cmd).goto(need(cmd, 'url')); },

  async close_page(cmd) {
    const closing = page(cmd);
    pages.delete(cmd.page);
    await closing.context().close(); // the page's sockets close with it, as a closed window's
  },

  async fill(cmd) { await page(cmd).fill(need(cmd, 'selector'), need(cmd, 'text')); },
  async type(cmd) { // after the field's current text, key by key
    const field = page(cmd).locator(need(cmd, 'selector'));
    await field.focus();
    await field.press('End');
    await field.pressSequentially(need(cmd, 'text'));
  },
  async press(cmd) { await page(cmd).press(need(cmd, 'selector'), need(cmd, 'key')); },
  async click(cmd) { await page(cmd).click(need(cmd, 'selector')); },

  async wait_for_text(cmd) { await waitForText(cmd, true); },
  async wait_for_no_text(cmd) { await waitForText(cmd, false); },

  async texts(cmd) { return page(cmd).evaluate(texts, need(cmd, 'selector')); },
  async evaluate(cmd) { return page(cmd).evaluate(need(cmd, 'expression')); },

  async screenshot(cmd) {
    await page(cmd).screenshot({ path: need(cmd, 'path'), fullPage: Boolean(cmd.fullPage) });
  },

  async close() {
    if (browser) await browser.close();
    browser = null;
  },
};

async function handle(line) {
  let cmd = {};
  try {
    cmd = JSON.parse(line);
    const run = Object.prototype.hasOwnProperty.call(commands, cmd.cmd) && commands[cmd.cmd];
    if (!run) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
    const result = await run(cmd);
    write({ id: cmd.id, ok: true, result: result === undefined ? null : result });
  } catch (err) {
    write({ id: cmd.id, ok: false, error: err instanceof Error ? err.message : String(err) });
  }
  if (cmd.cmd === 'close') process.exit(0);
}

// Commands run concurrently (each answer carries its id): a test can wait on two pages at once.
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => { if (line.trim()) handle(line); });
// Python went away without "close": do not leave Chromium behind.
rl.on('close', () => commands.close().finally(() => process.exit(0)));
write({ event: 'ready', playwright: require('playwright-core/package.json').version });
