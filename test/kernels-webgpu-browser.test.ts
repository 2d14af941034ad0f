// The webgpu backend's browser path (navigator.gpu, no Dawn): the backend and its self-check bundled
// with esbuild, served on 127.0.0.1 (a secure context) and run in headless Chromium on SwiftShader.
// Needs playwright-core and a Chromium binary ($CHROME_PATH or /usr/bin/chromium); without them the
// test is skipped with the reason, and with CI set it fails instead.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const CHROME = [process.env.CHROME_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => p && existsSync(p));

interface Tools {
  chromium: { launch(o: { executablePath: string; args: string[] }): Promise<Browser> };
  build(o: Record<string, unknown>): Promise<{ outputFiles: { text: string }[] }>;
}
interface Browser {
  newPage(): Promise<Page>;
  close(): Promise<void>;
}
interface Page {
  goto(url: string): Promise<unknown>;
  waitForFunction(fn: string, arg: null, o: { timeout: number }): Promise<unknown>;
  evaluate<T>(fn: string): Promise<T>;
}

async function tools(): Promise<Tools | string> {
  if (!CHROME) return 'no Chromium binary (apt-get install chromium, or set CHROME_PATH)';
  try {
    const pw = 'playwright-core';
    const es = 'esbuild';
    const { chromium } = (await import(pw)) as { chromium: Tools['chromium'] };
    const { build } = (await import(es)) as { build: Tools['build'] };
    return { chromium, build };
  } catch (e) {
    return `playwright-core or esbuild is not installed (${(e as Error).message.split('\n')[0]})`;
  }
}

const found = await tools();
const reason = typeof found === 'string' ? found : undefined;

test('webgpu in Chromium (navigator.gpu on SwiftShader): self-check against the reference', { skip: process.env.CI ? undefined : reason, timeout: 240_000 }, async () => {
  if (typeof found === 'string') assert.fail(`required when CI is set: ${found}`);
  const here = dirname(fileURLToPath(import.meta.url));
  // '../src/...index.js' is the .ts source under tsx and the compiled file under dist/ (npm test)
  const entry = `
    import { createWebGpuBackend } from '../src/kernels/webgpu/index.js';
    import { selfCheckWebGpu } from '../src/kernels/webgpu/selfcheck.js';
    (async () => {
      try {
        const be = await createWebGpuBackend({ precision: 'auto' });
        const checks = await selfCheckWebGpu(be);
        window.__result = { variant: be.info().variant, checks };
        be.dispose();
      } catch (e) {
        window.__result = { error: String(e && e.stack || e) };
      }
    })();`;
  const out = await found.build({ stdin: { contents: entry, resolveDir: here, loader: 'js' }, bundle: true, format: 'esm', platform: 'browser', write: false, logLevel: 'silent' });
  const js = out.outputFiles[0].text;
  const server: Server = createServer((req, res) => {
    const isJs = req.url === '/bundle.js';
    res.setHeader('content-type', isJs ? 'text/javascript' : 'text/html');
    res.end(isJs ? js : '<!doctype html><script type="module" src="/bundle.js"></script>');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const browser = await found.chromium.launch({
    executablePath: CHROME!,
    args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction('window.__result', null, { timeout: 200_000 });
    const r = await page.evaluate<{ variant?: string; error?: string; checks?: { id: string; relErr: number; ok: boolean }[] }>('window.__result');
    assert.equal(r.error, undefined, r.error);
    console.log(`# browser: ${r.variant}`);
    assert.match(r.variant ?? '', /navigator\.gpu/);
    const bad = r.checks!.filter((c) => !c.ok);
    assert.equal(bad.length, 0, `failed: ${bad.map((c) => `${c.id} (${c.relErr})`).join('; ')}`);
    assert.ok(r.checks!.some((c) => c.id.startsWith('identity') && c.id.includes('f16')), 'the f16 path ran');
  } finally {
    await browser.close();
    server.close();
  }
});
