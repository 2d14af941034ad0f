// A small stderr progress bar for the CLI. On a terminal it redraws one line; elsewhere (CI, pipes)
// it prints a line per quarter (after the first second) so logs stay short. The library only reports (done, total).

export interface ProgressBar {
  update(done: number, total: number, note?: string): void;
  done(note?: string): void;
}

export function progressBar(label: string, opts: { enabled?: boolean; stream?: NodeJS.WriteStream } = {}): ProgressBar {
  const stream = opts.stream ?? process.stderr;
  const enabled = opts.enabled ?? true;
  const tty = Boolean(stream.isTTY);
  const start = performance.now();
  let lastQuarter = -1;
  let lastDraw = 0;
  let lastLine = '';
  const line = (done: number, total: number, note?: string) => {
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 24;
    const filled = Math.round(frac * width);
    const secs = (performance.now() - start) / 1000;
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${done}/${total} ${secs.toFixed(1)}s${note ? ' ' + note : ''}`;
  };
  return {
    update(done, total, note) {
      if (!enabled) return;
      if (tty) {
        const now = performance.now();
        if (now - lastDraw < 50 && done < total) return;
        lastDraw = now;
        lastLine = line(done, total, note);
        stream.write(`\r${lastLine}\x1b[K`);
      } else {
        // Logs get a line per quarter, and only for operations slow enough to need one.
        const quarter = total > 0 ? Math.floor((4 * done) / total) : 0;
        if (quarter !== lastQuarter && performance.now() - start > 1000) {
          lastQuarter = quarter;
          stream.write(line(done, total, note) + '\n');
        }
      }
    },
    done(note) {
      if (!enabled) return;
      if (tty) stream.write(`\r${lastLine}${note ? ' ' + note : ''}\x1b[K\n`);
      else stream.write(`${label}: done in ${((performance.now() - start) / 1000).toFixed(1)} s${note ? ', ' + note : ''}\n`);
    },
  };
}
