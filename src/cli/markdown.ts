// Rewrites one marked section of a Markdown report (BENCHMARKS.md): the text between `<!-- NAME:begin -->`
// and `<!-- NAME:end -->`, appending the section under a heading when it is missing. Written atomically.

import { existsSync, readFileSync } from 'node:fs';
import { writeFileAtomic } from '../format/atomic.js';

export async function replaceMarkedSection(file: string, name: string, title: string, body: string): Promise<void> {
  const begin = `<!-- ${name}:begin -->`;
  const end = `<!-- ${name}:end -->`;
  const section = `${begin}\n${body}\n${end}`;
  let text = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmarks\n\n';
  const a = text.indexOf(begin);
  const b = text.indexOf(end);
  if (a >= 0 && b > a) text = text.slice(0, a) + section + text.slice(b + end.length);
  else text = `${text.trimEnd()}\n\n## ${title}\n\n${section}\n`;
  await writeFileAtomic(file, [new TextEncoder().encode(text)]);
}
