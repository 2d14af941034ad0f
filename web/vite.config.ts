// Builds the demo page from web/ (and the library from ../src, bundled, no copy) into dist-web/. The
// bundled model's files are static assets under models/, never part of the JS; precache.json lists the
// build for the service worker (public/sw.js). Both servers send COOP/COEP: threads need SharedArrayBuffer.

import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..');
const MODEL_DIR = join(repo, 'models', 'stories260K');
const MODEL_FILES = ['stories260K.bin', 'tok512.bin', 'stories260K.gguf'];

/** Cross-origin isolation: SharedArrayBuffer, hence wasm threads, needs both headers. */
export const ISOLATION_HEADERS = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

/**
 * Node-only code paths (files, folders, node:worker_threads) import node:* lazily and never run in a
 * browser: those imports stay as they are instead of becoming Vite's browser stubs.
 */
function nodeBuiltinsExternal(): Plugin {
  return {
    name: 'flute-node-builtins-external',
    enforce: 'pre',
    resolveId: (id) => (id.startsWith('node:') ? { id, external: true } : null),
  };
}

function bundledModel(): Plugin {
  return {
    name: 'flute-bundled-model',
    // dev server: models/* straight from the repository
    configureServer(server) {
      server.middlewares.use('/models/', (req, res, next) => {
        const name = (req.url ?? '').replace(/^\//, '').replace(/[?#].*$/, '');
        const file = join(MODEL_DIR, name);
        if (!MODEL_FILES.includes(name) || !existsSync(file)) return next();
        res.setHeader('content-type', 'application/octet-stream');
        res.setHeader('content-length', String(statSync(file).size));
        createReadStream(file).pipe(res);
      });
    },
    // build: models/* as assets, then the list of everything for the service worker
    generateBundle(_opts, bundle) {
      for (const f of MODEL_FILES) this.emitFile({ type: 'asset', fileName: `models/${f}`, source: readFileSync(join(MODEL_DIR, f)) });
      const files = [...Object.keys(bundle), 'index.html', 'sw.js'].filter((f) => !f.endsWith('.map') && !f.startsWith('.vite/')).sort();
      const version = createHash('sha256').update(files.join('\n')).digest('hex').slice(0, 12);
      this.emitFile({ type: 'asset', fileName: 'precache.json', source: JSON.stringify({ version, files }, null, 1) });
    },
  };
}

export default defineConfig({
  root: here,
  base: './',
  publicDir: join(here, 'public'),
  plugins: [nodeBuiltinsExternal(), bundledModel()],
  server: { headers: ISOLATION_HEADERS, fs: { allow: [repo] } },
  preview: { headers: ISOLATION_HEADERS },
  worker: { format: 'es', plugins: () => [nodeBuiltinsExternal()] },
  build: {
    outDir: join(repo, 'dist-web'),
    emptyOutDir: true,
    target: 'es2022',
    reportCompressedSize: true,
  },
});
