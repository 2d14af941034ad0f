// Option parsing shared by every command: node:util parseArgs plus typed conversions whose errors
// name the option and the expected value.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { FluteError } from '../errors.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** Options every command takes. */
export const COMMON_OPTIONS: OptionSpec = {
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' },
  verbose: { type: 'boolean' },
};

export function parse(command: string, argv: string[], options: OptionSpec): Parsed {
  try {
    const r = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Parsed['values'], positionals: r.positionals };
  } catch (e) {
    throw new FluteError('E_OPTION', `flute ${command}: ${(e as Error).message} (see flute ${command} --help)`);
  }
}

export function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === 'string' ? v : undefined;
}

/** A number option; `check` says what is valid, e.g. (v) => v > 0 with expected "a positive number". */
export function num(p: Parsed, name: string, dflt: number, check: (v: number) => boolean, expected: string): number {
  const raw = str(p, name);
  if (raw === undefined) return dflt;
  const v = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(v) || !check(v)) {
    throw new FluteError('E_OPTION', `--${name}: expected ${expected}, got ${JSON.stringify(raw)}`);
  }
  return v;
}

export const isPosInt = (v: number) => Number.isInteger(v) && v >= 1;
export const isNonNegInt = (v: number) => Number.isInteger(v) && v >= 0;

export function oneOf<T extends string>(p: Parsed, name: string, choices: readonly T[], dflt: T): T {
  const raw = str(p, name);
  if (raw === undefined) return dflt;
  if (!(choices as readonly string[]).includes(raw)) {
    throw new FluteError('E_OPTION', `--${name}: expected one of ${choices.join(', ')}, got ${JSON.stringify(raw)}`);
  }
  return raw as T;
}

export function atMostOnePositional(command: string, p: Parsed): string | undefined {
  if (p.positionals.length > 1) {
    throw new FluteError('E_OPTION', `flute ${command}: expected at most one model path, got ${p.positionals.length}: ${p.positionals.join(' ')}`);
  }
  return p.positionals[0];
}
