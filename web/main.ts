// The demo page: picks a model (bundled, picked or dropped), optionally quantizes it in the tab, then
// streams generated text. All engine work goes through the Engine interface (engine.ts, in a worker).
// window.__flute mirrors the page's state for scripts/tests (test/browser-demo.test.ts reads it).

import { WorkerEngine, type Engine, type Progress } from './engine.js';
import type { Capabilities } from './capabilities.js';
import type { BackendChoice, GenerateStats, ModelChoice, ModelInfo, QuantizeChoice, QuantTable } from './messages.js';

// ---------------------------------------------------------------------------------------------
// State and elements

interface DemoState {
  phase: 'starting' | 'idle' | 'loading' | 'ready' | 'generating' | 'error';
  capabilities: Capabilities | null;
  info: ModelInfo | null;
  text: string; // generated text of the last run, without the prompt
  stats: GenerateStats | null;
  error: string | null;
  offlineReady: boolean; // a service worker holds the page and models
}

const state: DemoState = { phase: 'starting', capabilities: null, info: null, text: '', stats: null, error: null, offlineReady: false };
(globalThis as { __flute?: DemoState }).__flute = state;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const el = {
  caps: $('caps'), files: $<HTMLInputElement>('files'), sourceFiles: $<HTMLInputElement>('source-files'), drop: $('drop'),
  quantize: $<HTMLInputElement>('quantize'), table: $<HTMLSelectElement>('table'), bits: $<HTMLSelectElement>('bits'), group: $<HTMLInputElement>('group'),
  backend: $<HTMLSelectElement>('backend'), load: $<HTMLButtonElement>('load'), download: $<HTMLAnchorElement>('download'),
  progress: $<HTMLProgressElement>('progress'), status: $('status'),
  prompt: $<HTMLTextAreaElement>('prompt'), maxTokens: $<HTMLInputElement>('max-tokens'), temperature: $<HTMLInputElement>('temperature'), seed: $<HTMLInputElement>('seed'),
  generate: $<HTMLButtonElement>('generate'), stop: $<HTMLButtonElement>('stop'), output: $('output'),
  backendLabel: $('backend-label'), speed: $('speed'), memory: $('memory'), modelInfo: $('model-info'),
};

const engine: Engine = new WorkerEngine();
let droppedFiles: File[] = [];
let abort: AbortController | null = null;

// ---------------------------------------------------------------------------------------------
// Formatting

function mb(bytes: number): string {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`;
}

function setStatus(text: string, error = false): void {
  el.status.textContent = text;
  el.status.classList.toggle('error', error);
}

function showProgress(p: Progress): void {
  el.progress.max = p.total || 1;
  el.progress.value = p.total ? p.done : 0;
  if (!p.total) el.progress.removeAttribute('value'); // indeterminate while the size is unknown
  const count = p.phase === 'download' ? `${mb(p.done)}${p.total ? ` of ${mb(p.total)}` : ''}` : `${p.done}/${p.total}`;
  setStatus(`${p.label} (${count})`);
}

function showMemory(): void {
  const info = state.info;
  const heap = (performance as Performance & { memory?: { usedJSHeapSize: number } }).memory;
  const parts = [
    info ? `${info.weightBytes === null ? '' : `weights ${mb(info.weightBytes)} on the backend, `}file ${mb(info.fileBytes)}` : null,
    heap ? `page JS heap ${mb(heap.usedJSHeapSize)}` : null,
  ].filter(Boolean);
  el.memory.textContent = parts.join('; ') || '–';
}

function describeCaps(c: Capabilities): string {
  const gpu = c.webgpu ? `WebGPU: yes (${c.adapter}${c.shaderF16 ? ', shader-f16' : ''})` : 'WebGPU: no';
  const threads = c.threads ? `threads: ${c.cores} (cross-origin isolated)` : `threads: no${c.crossOriginIsolated ? '' : ' (page not cross-origin isolated)'}`;
  return `${gpu} · WebAssembly SIMD: ${c.simd ? (c.relaxedSimd ? 'yes, relaxed' : 'yes') : 'no'} · ${threads}`;
}

// ---------------------------------------------------------------------------------------------
// Loading

function chosenModel(): ModelChoice | string {
  const source = (document.querySelector('input[name=source]:checked') as HTMLInputElement).value;
  // Absolute URLs: the worker resolves relative ones against its own script (assets/), not the page.
  const bundled = (file: string) => new URL(`./models/${file}`, location.href).href;
  if (source === 'bundled-bin') return { kind: 'bundled', url: bundled('stories260K.bin'), tokenizerUrl: bundled('tok512.bin') };
  if (source === 'bundled-gguf') return { kind: 'bundled', url: bundled('stories260K.gguf') };
  const files = droppedFiles.length ? droppedFiles : [...(el.files.files ?? [])];
  if (files.length === 0) return 'pick or drop a model file first';
  // With two files, the larger is the model and the smaller its llama2.c tokenizer.
  const sorted = [...files].sort((a, b) => b.size - a.size);
  return { kind: 'files', model: sorted[0], tokenizer: sorted[1] };
}

function chosenQuantization(): QuantizeChoice | undefined {
  if (!el.quantize.checked) return undefined;
  return { table: el.table.value as QuantTable, bits: Number(el.bits.value), groupSize: Number(el.group.value) };
}

async function load(): Promise<void> {
  const model = chosenModel();
  if (typeof model === 'string') return setStatus(model, true);
  state.phase = 'loading';
  state.error = null;
  el.load.disabled = el.generate.disabled = true;
  el.download.hidden = true;
  const t0 = performance.now();
  try {
    const info = await engine.load({ model, backend: el.backend.value as BackendChoice, quantize: chosenQuantization(), onProgress: showProgress });
    state.info = info;
    state.phase = 'ready';
    el.progress.max = 1;
    el.progress.value = 1;
    setStatus(`loaded ${info.name} (${info.format}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    el.backendLabel.textContent = info.backendLabel;
    el.backendLabel.title = info.backendReason;
    el.modelInfo.textContent = `${info.name}: ${(info.params / 1e6).toFixed(2)} M params, ${info.quantized ?? 'dense f32'}`;
    if (await engine.checkpoint()) el.download.hidden = false;
    showMemory();
  } catch (e) {
    state.phase = 'error';
    state.error = (e as Error).message;
    setStatus(`load failed: ${state.error}`, true);
  } finally {
    el.load.disabled = false;
    el.generate.disabled = state.phase !== 'ready';
  }
}

// ---------------------------------------------------------------------------------------------
// Generation

async function run(): Promise<void> {
  state.phase = 'generating';
  state.text = '';
  state.stats = null;
  abort = new AbortController();
  el.generate.disabled = el.load.disabled = true;
  el.stop.disabled = false;
  const prompt = el.prompt.value;
  el.output.textContent = '';
  const promptSpan = document.createElement('span');
  promptSpan.className = 'prompt';
  promptSpan.textContent = prompt;
  const textNode = document.createTextNode('');
  el.output.append(promptSpan, textNode);
  const req = { prompt, maxTokens: Number(el.maxTokens.value), temperature: Number(el.temperature.value), seed: Number(el.seed.value) };
  const t0 = performance.now();
  let firstAt = 0;
  let tokens = 0;
  try {
    const it = engine.generate(req, abort.signal);
    for (;;) {
      const r = await it.next();
      if (r.done) {
        state.stats = r.value;
        break;
      }
      if (!firstAt) firstAt = performance.now();
      tokens++;
      state.text += r.value;
      textNode.data = state.text;
      // tok/s from the first token on (run.c's convention: the prompt's prefill is not counted)
      const s = (performance.now() - firstAt) / 1000;
      if (tokens > 1 && s > 0) el.speed.textContent = `${((tokens - 1) / s).toFixed(1)} tok/s`;
    }
    const st = state.stats;
    const decodeTokS = st.decodeMs > 0 ? (st.generatedTokens / (st.decodeMs / 1000)).toFixed(1) : '–';
    el.speed.textContent = `${decodeTokS} tok/s decode, prompt ${st.promptTokens} tokens in ${st.prefillMs.toFixed(0)} ms; ${st.generatedTokens} tokens, ${st.stopReason}`;
    setStatus(`generated ${st.generatedTokens} tokens in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    state.phase = 'ready';
  } catch (e) {
    state.phase = 'error';
    state.error = (e as Error).message;
    setStatus(`generation failed: ${state.error}`, true);
  } finally {
    abort = null;
    el.stop.disabled = true;
    el.generate.disabled = el.load.disabled = false;
    showMemory();
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

el.load.onclick = () => void load();
el.generate.onclick = () => void run();
el.stop.onclick = () => abort?.abort();
el.files.onchange = () => {
  droppedFiles = [];
  el.sourceFiles.checked = true;
};
el.download.onclick = async (e) => {
  if (el.download.href.startsWith('blob:')) return;
  e.preventDefault();
  const bytes = await engine.checkpoint();
  if (!bytes) return;
  el.download.href = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type: 'application/octet-stream' }));
  el.download.click();
};
for (const ev of ['dragenter', 'dragover'] as const) {
  el.drop.addEventListener(ev, (e) => {
    e.preventDefault();
    el.drop.classList.add('over');
  });
}
el.drop.addEventListener('dragleave', () => el.drop.classList.remove('over'));
el.drop.addEventListener('drop', (e) => {
  e.preventDefault();
  el.drop.classList.remove('over');
  droppedFiles = [...(e.dataTransfer?.files ?? [])];
  if (droppedFiles.length) {
    el.sourceFiles.checked = true;
    el.drop.textContent = `dropped: ${droppedFiles.map((f) => `${f.name} (${mb(f.size)})`).join(', ')}`;
  }
});
el.table.onchange = () => {
  if (el.table.value === 'fp4') el.bits.value = '4'; // E2M1 is a 4-bit format
};

async function start(): Promise<void> {
  try {
    state.capabilities = await engine.capabilities();
    el.caps.textContent = describeCaps(state.capabilities);
    state.phase = 'idle';
  } catch (e) {
    state.phase = 'error';
    state.error = (e as Error).message;
    el.caps.textContent = `the engine worker failed to start: ${state.error}`;
  }
  // Offline: a service worker keeps the page, its scripts and the bundled models (production builds only).
  if (import.meta.env.PROD && 'serviceWorker' in navigator) {
    try {
      await navigator.serviceWorker.register('./sw.js');
      await navigator.serviceWorker.ready;
      state.offlineReady = true;
    } catch (e) {
      console.warn('service worker not registered:', e);
    }
  }
}

void start();
