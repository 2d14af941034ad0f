// Where the bundled model and texts live, found from this module's location so the CLI works from
// the TypeScript sources (tsx), from dist/ and from an installed package alike.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'flute-engine') return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error('flute-engine: cannot find the package root from ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export const bundledModelPath = () => join(packageRoot(), 'models', 'stories260K', 'stories260K.bin');
export const bundledEvalTextPath = () => join(packageRoot(), 'data', 'tinystories_val_excerpt.txt');
export const bundledWikiTextPath = () => join(packageRoot(), 'data', 'wiki.test.raw');
