// One error type for the whole library: a stable machine-readable `code` plus a message that names
// the file, tensor or option at fault and what was expected. Library code throws; only the CLI exits.

/** Stable error codes. Never rename or reuse one: scripts match on them. */
export type ErrorCode =
  | 'E_NOT_FOUND' // a file, tensor or model part that should exist does not
  | 'E_IO' // the operating system refused a read or write (permissions, full disk...)
  | 'E_TRUNCATED' // a file ends before the data its header promises
  | 'E_BAD_HEADER' // a header or metadata value is malformed or out of range
  | 'E_UNSUPPORTED_DTYPE' // a tensor dtype this reader or operation cannot handle
  | 'E_SHAPE' // tensor shapes or input widths disagree
  | 'E_OPTION' // a user-supplied option is out of range or malformed
  | 'E_NONFINITE' // NaN or Inf where finite numbers are required
  | 'E_FORMAT' // a file is not in the expected format at all (wrong magic, unknown kind)
  | 'E_BACKEND' // a kernel backend is unavailable or failed its self-check
  | 'E_ABORTED' // the caller aborted the operation through an AbortSignal
  | 'E_RESOURCE'; // the job needs more memory (or another resource) than this machine or a set limit allows

export class FluteError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FluteError';
    this.code = code;
  }
}

/** Throws E_OPTION unless `cond` holds; `what` names the option, `expected` says what was wanted. */
export function checkOption(cond: boolean, what: string, expected: string, got: unknown): asserts cond {
  if (!cond) throw new FluteError('E_OPTION', `${what}: expected ${expected}, got ${formatValue(got)}`);
}

/**
 * Refuses keys an options object does not define: JavaScript callers get no type check, and a misspelt
 * or misplaced option would otherwise be dropped without a word. `hint(key)` may add a sentence.
 */
export function checkOptionKeys(opts: object, allowed: readonly string[], what: string, hint: (key: string) => string = () => ''): void {
  for (const key of Object.keys(opts)) {
    if (!allowed.includes(key)) throw new FluteError('E_OPTION', `${what}: unknown option ${JSON.stringify(key)}, expected one of ${allowed.join(', ')}${hint(key)}`);
  }
}

export function formatValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  try {
    const s = JSON.stringify(v);
    return s.length > 80 ? s.slice(0, 77) + '...' : s;
  } catch {
    return String(v);
  }
}
