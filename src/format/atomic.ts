// All-or-nothing file output (Node only): bytes go to a temp file beside the target, which is fsynced
// and renamed over the target on commit. On any failure the temp file is removed and a previous file
// at the target is left untouched. A process killed mid-write leaves only its temp file, which the next
// write to the same target removes. node:fs is imported lazily so browser bundles can include callers.

import { FluteError } from '../errors.js';

type Fs = typeof import('node:fs/promises');
type FileHandle = Awaited<ReturnType<Fs['open']>>;

// FileHandle.write caps one call at 2 GiB - 1.
const WRITE_CHUNK = 1 << 30;

/** Maps an OS error met while writing `path` to an E_IO FluteError with a plain-words message. */
export function writeError(e: unknown, path: string, dir: string): FluteError {
  if (e instanceof FluteError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const why = e instanceof Error ? e.message : String(e);
  const msg =
    code === 'ENOSPC' || code === 'EDQUOT' ? `disk full while writing ${path}`
    : code === 'EACCES' || code === 'EPERM' ? `no permission to write ${path}`
    : code === 'EROFS' ? `cannot write ${path}: the file system is read-only`
    : code === 'ENOENT' || code === 'ENOTDIR' ? `cannot write ${path}: folder ${dir} does not exist`
    : code === 'EISDIR' ? `cannot write ${path}: it is a folder`
    : `cannot write ${path}: ${why}`;
  return new FluteError('E_IO', msg, { cause: e });
}

/** True when a process with this id runs (EPERM: it runs under another user). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === 'EPERM';
  }
}

/** Removes `.<base>.<pid>.<random>.tmp` files in `dir` whose writer process is gone; best effort. */
async function removeStaleTemps(fs: Fs, dir: string, base: string, join: (...p: string[]) => string): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return; // a missing folder is reported by the open that follows
  }
  const prefix = `.${base}.`;
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const m = /^(\d+)\.[a-z0-9]+\.tmp$/.exec(name.slice(prefix.length));
    if (m && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))) await fs.rm(join(dir, name), { force: true }).catch(() => undefined);
  }
}

export class AtomicFileWriter {
  /** Bytes written so far. */
  bytesWritten = 0;
  private state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(
    readonly path: string,
    readonly tempPath: string,
    private readonly dir: string,
    private readonly fs: Fs,
    private readonly fh: FileHandle,
  ) {}

  /**
   * Creates the temp file `<dir>/.<base>.<pid>.<random>.tmp`; E_IO when the folder is missing or
   * unwritable. Temp files for the same target left by a process that no longer runs (killed before it
   * could clean up) are removed first.
   */
  static async open(path: string): Promise<AtomicFileWriter> {
    const fs = await import('node:fs/promises');
    const { dirname, basename, join } = await import('node:path');
    const dir = dirname(path);
    await removeStaleTemps(fs, dir, basename(path), join);
    const tempPath = join(dir, `.${basename(path)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`);
    try {
      // 'wx' fails rather than clobbering if the random name is somehow taken.
      return new AtomicFileWriter(path, tempPath, dir, fs, await fs.open(tempPath, 'wx'));
    } catch (e) {
      throw writeError(e, path, dir);
    }
  }

  async write(bytes: Uint8Array): Promise<void> {
    this.checkOpen();
    try {
      for (let done = 0; done < bytes.length; ) {
        const n = Math.min(bytes.length - done, WRITE_CHUNK);
        const { bytesWritten } = await this.fh.write(bytes, done, n, this.bytesWritten + done);
        if (bytesWritten === 0) throw new FluteError('E_IO', `cannot write ${this.path}: the system accepted no bytes`);
        done += bytesWritten;
      }
      this.bytesWritten += bytes.length;
    } catch (e) {
      await this.abort();
      throw writeError(e, this.path, this.dir);
    }
  }

  /** Flushes to disk, closes and renames the temp file over `path`. */
  async commit(): Promise<void> {
    this.checkOpen();
    try {
      await this.fh.sync();
      await this.fh.close();
      await this.fs.rename(this.tempPath, this.path);
      this.state = 'committed';
    } catch (e) {
      await this.abort();
      throw writeError(e, this.path, this.dir);
    }
    // Make the rename itself durable; not possible everywhere (Windows), so best effort.
    try {
      const d = await this.fs.open(this.dir, 'r');
      await d.sync().finally(() => d.close());
    } catch {
      /* ignore */
    }
  }

  /** Removes the temp file; safe to call more than once, and a no-op after commit. */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.fh.close().catch(() => undefined);
    await this.fs.rm(this.tempPath, { force: true }).catch(() => undefined);
  }

  private checkOpen(): void {
    if (this.state !== 'open') throw new FluteError('E_IO', `cannot write ${this.path}: the writer is already ${this.state}`);
  }
}

/** Writes the chunks to `path` atomically; if the iterator throws, the error propagates and nothing is left behind. */
export async function writeFileAtomic(path: string, chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<number> {
  const w = await AtomicFileWriter.open(path);
  try {
    for await (const chunk of chunks) await w.write(chunk);
    await w.commit();
    return w.bytesWritten;
  } catch (e) {
    await w.abort();
    throw e;
  }
}
