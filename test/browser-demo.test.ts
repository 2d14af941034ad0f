// The demo page (web/) end to end in headless Chromium: built with Vite, served with COOP/COEP, then
// driven through its own controls. Greedy text from the bundled model must equal what Node's generate()
// gives, with WebGPU on (SwiftShader) and with WebGPU disabled (WebAssembly with threads); a model
// quantized in the tab must equal Node's quantizeModelToBytes + load; the page must work offline once
// loaded. Also checks that the library's browser entry imports nothing from Node at load time.
// Needs playwright-core, vite, esbuild and a Chromium binary ($CHROME_PATH or /usr/bin/chromium); without
// them the test is skipped with the reason, and with CI set it fails instead. The screenshot goes to
// $FLUTE_SCREENSHOT (npm run test:browser: docs/demo.png), else out/browser-demo.png.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { builtinModules } from 'node:module';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { generate, loadModel, loadModelFromBytes, openModelFile, quantizeModelToBytes } from '../src/index.js';
import { writeFileAtomic } from '../src/format/atomic.js';

const CHROME = [process.env.CHROME_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => p && existsSync(p));

// This file runs as test/*.ts (tsx) and as dist/test/*.js (npm test): the repository is the folder above
// the first one that holds package.json.
function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json'))) d = dirname(d);
  return d;
}
const REPO = repoRoot();
const DIST = join(REPO, 'dist-web');
const MODEL = join(REPO, 'models/stories260K/stories260K.bin');

const PROMPT = 'Once upon a time';
const MAX_TOKENS = 60;
const QUANT = { table: 'nf', bits: 4, groupSize: 32 } as const;

// ---------------------------------------------------------------------------------------------
// Tools (loaded by name at run time so that a missing one is a skip reason, not a compile error)

interface Page {
  goto(url: string): Promise<unknown>;
  reload(): Promise<unknown>;
  waitForFunction(fn: string, arg: null, o: { timeout: number }): Promise<unknown>;
  evaluate<T>(fn: string): Promise<T>;
  click(selector: string): Promise<void>;
  fill(selector: string, value: string): Promise<void>;
  check(selector: string): Promise<void>;
  selectOption(selector: string, value: string): Promise<unknown>;
  screenshot(o: { fullPage: boolean }): Promise<Uint8Array>;
  on(event: 'console' | 'pageerror', fn: (m: { text?: () => string; message?: string }) => void): void;
}
interface Context {
  newPage(): Promise<Page>;
  setOffline(offline: boolean): Promise<void>;
}
interface Browser {
  newContext(o?: Record<string, unknown>): Promise<Context>;
  close(): Promise<void>;
}
interface Tools {
  chromium: { launch(o: { executablePath: string; args: string[]; headless: boolean }): Promise<Browser> };
  vite: { build(o: Record<string, unknown>): Promise<unknown> };
  esbuild: { build(o: Record<string, unknown>): Promise<{ metafile: { inputs: Record<string, unknown> } }> };
}

async function tools(): Promise<Tools | string> {
  if (!CHROME) return 'no Chromium binary (apt-get install chromium, or set CHROME_PATH)';
  try {
    const [pw, vite, esbuild] = ['playwright-core', 'vite', 'esbuild'];
    const { chromium } = (await import(pw)) as { chromium: Tools['chromium'] };
    return { chromium, vite: (await import(vite)) as Tools['vite'], esbuild: (await import(esbuild)) as Tools['esbuild'] };
  } catch (e) {
    return `playwright-core, vite or esbuild is not installed (${(e as Error).message.split('\n')[0]})`;
  }
}

const found = await tools();
const reason = typeof found === 'string' ? found : undefined;
const skip = process.env.CI ? undefined : reason;
function need(): Tools {
  if (typeof found === 'string') assert.fail(`required when CI is set: ${found}`);
  return found;
}

// ---------------------------------------------------------------------------------------------
// Node's answers

async function nodeText(lm: Awaited<ReturnType<typeof loadModel>>): Promise<string> {
  let text = '';
  try {
    for await (const piece of generate(lm.model, lm.tokenizer, PROMPT, { maxTokens: MAX_TOKENS, temperature: 0, topK: 0, topP: 1, seed: 42 })) text += piece;
  } finally {
    lm.dispose();
  }
  return text;
}

const expected = {
  async dense(): Promise<string> {
    return nodeText(await loadModel(MODEL, { backend: 'wasm' }));
  },
  async quantized(): Promise<string> {
    const src = await openModelFile(MODEL);
    try {
      const { bytes } = await quantizeModelToBytes(src, { tableKind: QUANT.table, bits: QUANT.bits, groupSize: QUANT.groupSize });
      return nodeText(await loadModelFromBytes(bytes, { backend: 'wasm' }));
    } finally {
      await src.close();
    }
  },
};

// ---------------------------------------------------------------------------------------------
// Serving dist-web with the headers threads need

const TYPES: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.bin': 'application/octet-stream', '.gguf': 'application/octet-stream' };

async function serve(root: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const file = resolve(root, '.' + (path.endsWith('/') ? path + 'index.html' : path));
    if (!file.startsWith(root + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'cross-origin-opener-policy': 'same-origin',
      'cross-origin-embedder-policy': 'require-corp',
      'cache-control': 'no-cache',
    });
    res.end(readFileSync(file));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/` };
}

// ---------------------------------------------------------------------------------------------
// Driving the page

interface PageState {
  phase: string;
  capabilities: { webgpu: boolean; crossOriginIsolated: boolean; threads: boolean; cores: number } | null;
  info: { backend: string; backendLabel: string; threads: number; format: string; quantized: string | null } | null;
  text: string;
  stats: { generatedTokens: number; stopReason: string } | null;
  error: string | null;
  offlineReady: boolean;
}

const state = (page: Page) => page.evaluate<PageState>('JSON.parse(JSON.stringify(window.__flute))');

async function waitPhase(page: Page, phases: string[], timeout = 180_000): Promise<PageState> {
  const list = JSON.stringify([...phases, 'error']);
  await page.waitForFunction(`window.__flute && ${list}.includes(window.__flute.phase)`, null, { timeout });
  const s = await state(page);
  assert.notEqual(s.phase, 'error', `the page reports an error: ${s.error}`);
  return s;
}

async function loadAndGenerate(page: Page, opts: { source?: string; quantize?: boolean; backend?: 'auto' | 'webgpu' | 'wasm' } = {}): Promise<PageState> {
  await page.check(`input[name=source][value=${opts.source ?? 'bundled-bin'}]`);
  await page.selectOption('#backend', opts.backend ?? 'auto');
  if (opts.quantize) {
    await page.check('#quantize');
    await page.selectOption('#table', QUANT.table);
    await page.selectOption('#bits', String(QUANT.bits));
    await page.fill('#group', String(QUANT.groupSize));
  }
  await page.click('#load');
  await page.waitForFunction(`window.__flute.phase !== 'idle'`, null, { timeout: 10_000 }).catch(() => undefined);
  await waitPhase(page, ['ready']);
  await page.fill('#prompt', PROMPT);
  await page.fill('#max-tokens', String(MAX_TOKENS));
  await page.fill('#temperature', '0');
  await page.click('#generate');
  await page.waitForFunction(`window.__flute.phase === 'generating' || window.__flute.stats !== null || window.__flute.phase === 'error'`, null, { timeout: 10_000 });
  await page.waitForFunction(`window.__flute.phase !== 'generating'`, null, { timeout: 180_000 });
  const s = await waitPhase(page, ['ready']);
  assert.ok(s.stats, 'the run finished with stats');
  return s;
}

async function openPage(browser: Browser, url: string): Promise<{ context: Context; page: Page; logs: string[] }> {
  const context = await browser.newContext({ viewport: { width: 1000, height: 860 } });
  const page = await context.newPage();
  const logs: string[] = [];
  page.on('console', (m) => logs.push(m.text?.() ?? ''));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await waitPhase(page, ['idle'], 60_000);
  return { context, page, logs };
}

const BASE_ARGS = ['--headless=new', '--no-sandbox', '--disable-background-networking'];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan'];

// ---------------------------------------------------------------------------------------------
// Tests

test('src/browser.ts imports nothing from Node at load time (only lazy import("node:...") on Node-only paths)', { skip, timeout: 60_000 }, async () => {
  const { esbuild } = need();
  const builtins = new Set(builtinModules);
  const bad: string[] = [];
  await esbuild.build({
    entryPoints: [join(REPO, 'src/browser.ts')], bundle: true, format: 'esm', platform: 'browser', write: false, metafile: true, logLevel: 'silent',
    plugins: [{
      name: 'no-node-at-load',
      setup(b: { onResolve(o: { filter: RegExp }, f: (a: { path: string; kind: string; importer: string }) => unknown): void }) {
        b.onResolve({ filter: /.*/ }, (a) => {
          const bare = a.path.replace(/^node:/, '');
          if (!a.path.startsWith('node:') && !builtins.has(bare) && !builtins.has(bare.split('/')[0])) return undefined;
          if (a.kind !== 'dynamic-import') bad.push(`${a.importer.slice(REPO.length + 1)}: ${a.kind} ${a.path}`);
          return { path: a.path, external: true };
        });
      },
    }],
  });
  assert.deepEqual(bad, [], 'static imports of Node built-ins reachable from src/browser.ts');
});

test('demo page: greedy text equals Node\'s with WebGPU on, with WebGPU off (wasm threads), quantized in the tab, and offline', { skip, timeout: 600_000 }, async () => {
  const t = need();
  const [dense, quantized] = [await expected.dense(), await expected.quantized()];
  assert.ok(dense.length > 20 && quantized.length > 20, 'Node generated text');

  await t.vite.build({ configFile: join(REPO, 'web/vite.config.ts'), logLevel: 'warn' });
  assert.ok(existsSync(join(DIST, 'assets')), 'vite wrote dist-web/assets');
  logBundleSize();

  const { server, url } = await serve(DIST);
  try {
    // 1. WebGPU on (SwiftShader): the page sees an adapter; text equals Node's.
    let browser = await t.chromium.launch({ executablePath: CHROME!, args: [...BASE_ARGS, ...WEBGPU_ARGS], headless: true });
    try {
      const { context, page, logs } = await openPage(browser, url);
      const caps = (await state(page)).capabilities!;
      assert.equal(caps.webgpu, true, `navigator.gpu gave an adapter (console: ${logs.join(' | ')})`);
      assert.equal(caps.crossOriginIsolated, true, 'COOP/COEP make the page cross-origin isolated');
      const s = await loadAndGenerate(page, { backend: 'webgpu' });
      console.log(`# WebGPU run: ${s.info!.backendLabel}: ${JSON.stringify(s.text)}`);
      assert.equal(s.info!.backend, 'webgpu', 'the forward pass ran on WebGPU');
      assert.equal(s.text, dense, 'the page\'s greedy text equals Node\'s generate()');
      const png = await page.screenshot({ fullPage: true });
      const shot = process.env.FLUTE_SCREENSHOT ? resolve(process.env.FLUTE_SCREENSHOT) : join(REPO, 'out', 'browser-demo.png');
      const { mkdir } = await import('node:fs/promises');
      await mkdir(dirname(shot), { recursive: true });
      await writeFileAtomic(shot, [png]);
      console.log(`# screenshot: ${shot}`);

      // 2. A dense model quantized in the tab gives what Node's quantizeModelToBytes + load gives.
      const q = await loadAndGenerate(page, { quantize: true, backend: 'wasm' });
      assert.match(q.info!.quantized ?? '', /^nf4, g=32/);
      assert.equal(q.text, quantized, 'quantized in the tab: greedy text equals Node\'s');

      // 3. Offline once loaded: the service worker serves the page, its scripts and the models.
      await page.waitForFunction('window.__flute.offlineReady', null, { timeout: 60_000 });
      await context.setOffline(true);
      await page.reload();
      await waitPhase(page, ['idle'], 60_000);
      const off = await loadAndGenerate(page, { source: 'bundled-gguf' });
      assert.equal(off.text, dense, 'offline, the bundled GGUF gives the same text');
    } finally {
      await browser.close();
    }

    // 4. WebGPU disabled: WebAssembly with threads (cross-origin isolated) gives the same text.
    browser = await t.chromium.launch({ executablePath: CHROME!, args: [...BASE_ARGS, '--disable-features=WebGPU'], headless: true });
    try {
      const { page } = await openPage(browser, url);
      const caps = (await state(page)).capabilities!;
      assert.equal(caps.webgpu, false, 'WebGPU is disabled');
      assert.equal(caps.threads, true, 'shared memory for threads (crossOriginIsolated)');
      const s = await loadAndGenerate(page);
      console.log(`# WebAssembly run: ${s.info!.backendLabel}`);
      assert.equal(s.info!.backend, caps.cores > 1 ? 'wasm-threads' : 'wasm');
      assert.equal(s.info!.threads, caps.cores, 'one thread per core');
      assert.ok(caps.cores > 1, `this check needs 2+ cores to see threads run (navigator.hardwareConcurrency = ${caps.cores})`);
      assert.equal(s.text, dense, 'the WebAssembly path gives Node\'s text too');
    } finally {
      await browser.close();
    }
  } finally {
    server.close();
  }
});

/** JS (the wasm kernels are generated by it at start-up) without the model files: raw and gzip bytes. */
function logBundleSize(): void {
  const files = (JSON.parse(readFileSync(join(DIST, 'precache.json'), 'utf8')) as { files: string[] }).files.filter((f) => !f.startsWith('models/'));
  let raw = 0;
  let gz = 0;
  for (const f of files) {
    const b = readFileSync(join(DIST, f));
    raw += b.length;
    gz += gzipSync(b, { level: 9 }).length;
  }
  console.log(`# bundle without the model: ${files.length} files, ${(raw / 1024).toFixed(1)} KiB raw, ${(gz / 1024).toFixed(1)} KiB gzip`);
}
