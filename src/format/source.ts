// Random-access bytes behind every weights reader: a file in Node, or bytes already in memory (browser,
// tests, downloads through fetchBytes). Readers fetch one tensor at a time through it, so no file is ever read whole.
// node:fs is imported lazily here so that bundling this module for a browser pulls in nothing from Node.

import { FluteError } from '../errors.js';

export interface ByteSource {
  /** The path, URL or "<memory>" label, for error messages. */
  readonly name: string;
  readonly size: number;
  /** Exactly `length` bytes at `offset` in a fresh buffer the caller owns; E_TRUNCATED past the end. */
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

// FileHandle.read caps one call at 2 GiB - 1; larger tensors are read in pieces.
const READ_CHUNK = 1 << 30;

function checkRange(name: string, size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new FluteError('E_OPTION', `${name}: read range must be non-negative integers, got offset ${offset}, length ${length}`);
  }
  if (offset + length > size) {
    throw new FluteError('E_TRUNCATED', `${name}: needs bytes ${offset}..${offset + length} but the file is only ${size} bytes long`);
  }
}

function readError(e: unknown, path: string): FluteError {
  if (e instanceof FluteError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const why = e instanceof Error ? e.message : String(e);
  if (code === 'ENOENT') return new FluteError('E_NOT_FOUND', `file not found: ${path}`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new FluteError('E_IO', `no permission to read ${path}`, { cause: e });
  if (code === 'EISDIR') return new FluteError('E_IO', `${path} is a folder, not a file`, { cause: e });
  return new FluteError('E_IO', `cannot read ${path}: ${why}`, { cause: e });
}

/** Opens a file for random access (Node only). E_NOT_FOUND when it does not exist, E_IO for other OS errors. */
export async function openFileSource(path: string): Promise<ByteSource> {
  const fs = await import('node:fs/promises');
  let fh: Awaited<ReturnType<typeof fs.open>>;
  try {
    fh = await fs.open(path, 'r');
  } catch (e) {
    throw readError(e, path);
  }
  let size: number;
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new FluteError('E_IO', `${path} is not a regular file`);
    size = st.size;
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw readError(e, path);
  }
  let closed = false;
  return {
    name: path,
    size,
    async read(offset, length) {
      if (closed) throw new FluteError('E_IO', `${path}: read after close`);
      checkRange(path, size, offset, length);
      const buf = new Uint8Array(length);
      let done = 0;
      try {
        while (done < length) {
          const { bytesRead } = await fh.read(buf, done, Math.min(length - done, READ_CHUNK), offset + done);
          // The file shrank after it was opened.
          if (bytesRead === 0) throw new FluteError('E_TRUNCATED', `${path}: file ended at byte ${offset + done} while reading ${length} bytes at ${offset}`);
          done += bytesRead;
        }
      } catch (e) {
        throw readError(e, path);
      }
      return buf;
    },
    async close() {
      if (closed) return;
      closed = true;
      await fh.close();
    },
  };
}

/** A source over bytes already in memory. Reads return copies, so callers may keep or modify them. */
export function memorySource(bytes: Uint8Array, name = '<memory>'): ByteSource {
  return {
    name,
    size: bytes.length,
    async read(offset, length) {
      checkRange(name, bytes.length, offset, length);
      return bytes.slice(offset, offset + length);
    },
    async close() {},
  };
}

/**
 * The last part of a path or URL ("models/a.bin" -> "a.bin"; a URL loses its query), as POSIX
 * path.basename gives for paths, without node:path so that browser bundles can use it.
 */
export function baseName(path: string): string {
  const p = (/^[a-z][a-z0-9+.-]*:\/\//i.test(path) ? path.replace(/[?#].*$/, '') : path).replace(/\/+$/, '');
  return p.slice(p.lastIndexOf('/') + 1);
}

export interface FetchBytesOptions {
  /** Called as bytes arrive; `total` is the Content-Length, or 0 when the server does not send one. */
  readonly onProgress?: (loaded: number, total: number) => void;
  readonly signal?: AbortSignal;
}

/** Downloads a URL whole (fetch: browsers, Node 18+), reporting progress; E_NOT_FOUND / E_IO on failure. */
export async function fetchBytes(url: string, opts: FetchBytesOptions = {}): Promise<Uint8Array> {
  let res: Response;
  try {
    res = await fetch(url, { signal: opts.signal });
  } catch (e) {
    if (opts.signal?.aborted) throw new FluteError('E_ABORTED', `${url}: download aborted`, { cause: e });
    throw new FluteError('E_IO', `cannot fetch ${url}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (!res.ok) throw new FluteError(res.status === 404 ? 'E_NOT_FOUND' : 'E_IO', `${url}: HTTP ${res.status} ${res.statusText}`);
  const total = Number(res.headers.get('content-length') ?? 0) || 0;
  if (!res.body) {
    const bytes = new Uint8Array(await res.arrayBuffer());
    opts.onProgress?.(bytes.length, total || bytes.length);
    return bytes;
  }
  // Chunks are gathered, then copied once: Content-Length is only a hint (compressed responses differ).
  const parts: Uint8Array[] = [];
  let loaded = 0;
  const reader = res.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      loaded += value.length;
      opts.onProgress?.(loaded, total);
    }
  } catch (e) {
    if (opts.signal?.aborted) throw new FluteError('E_ABORTED', `${url}: download aborted`, { cause: e });
    throw new FluteError('E_IO', `${url}: download failed after ${loaded} bytes: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A path opens as a file source; a ByteSource passes through. `owned` says whether the caller opened it. */
export async function resolveSource(source: ByteSource | string): Promise<{ src: ByteSource; owned: boolean }> {
  return typeof source === 'string' ? { src: await openFileSource(source), owned: true } : { src: source, owned: false };
}

/**
 * Runs a container parser over `source`. On success the parsed reader owns the source; on failure a
 * source opened here from a path is closed, and a ByteSource passed in stays open (the caller's).
 */
export async function parseSource<T>(source: ByteSource | string, parse: (src: ByteSource) => Promise<T>): Promise<T> {
  const { src, owned } = await resolveSource(source);
  try {
    return await parse(src);
  } catch (e) {
    if (owned) await src.close().catch(() => undefined);
    throw e;
  }
}
