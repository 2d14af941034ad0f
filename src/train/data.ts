// Calibration data for NFL: the split of the bundled TinyStories excerpt into an evaluation part and
// a calibration part (never score text the scales were trained on), and the cutting of a token stream
// into calibration sequences. Tokenizing is the caller's (eval/perplexity.ts evalTokens).

import { FluteError } from '../errors.js';

/**
 * The share of the TinyStories excerpt, at its end, held out for calibration (297 sequences of 256
 * tokens). A larger calibration part was tried (0.85: 1289 sequences, NFL's default taking 1024) and
 * dropped when the sweep scored only the first 40 windows of the rest: NFL scored worse with it there
 * and on the 48 windows after them (QUALITY.md).
 */
export const CALIBRATION_FRACTION = 0.2;

export interface TextSplit {
  readonly evaluation: string; // text[0, cut): scored by flute eval --sweep
  readonly calibration: string; // text[cut + 2, end): NFL's default calibration text
  readonly cut: number; // character offset of the "\n\n" that separates them
}

/**
 * Splits a text of "\n\n"-separated stories: the evaluation part is everything before the first story
 * start ("\n\nOnce upon a time", how 713 of the excerpt's stories begin) at or after
 * (1 - fraction) of the characters; the calibration part is everything after it. A text without such
 * a story start is cut at the first "\n\n" after that point instead. Whole stories land on one side,
 * so no story is partly trained on and partly scored.
 */
export function splitEvalCalibration(text: string, fraction = CALIBRATION_FRACTION): TextSplit {
  if (!(fraction > 0 && fraction < 1)) throw new FluteError('E_OPTION', `calibration fraction: expected a number in (0, 1), got ${fraction}`);
  const mark = Math.floor((1 - fraction) * text.length);
  let cut = text.indexOf('\n\nOnce upon a time', mark);
  if (cut < 0) cut = text.indexOf('\n\n', mark);
  if (cut < 0 || cut === 0) throw new FluteError('E_OPTION', `calibration split: the text (${text.length} characters) has no blank line after character ${mark} to cut at`);
  return { evaluation: text.slice(0, cut), calibration: text.slice(cut + 2), cut };
}

/**
 * `count` consecutive, non-overlapping sequences of `length` tokens from the start of the stream
 * (FLUTE slices its calibration stream the same way). Each sequence trains on its length-1 next-token
 * predictions. `what` names the source in errors.
 */
export function calibrationSequences(tokens: ArrayLike<number>, count: number, length: number, what = 'calibration text'): Int32Array[] {
  if (!Number.isInteger(count) || count < 1) throw new FluteError('E_OPTION', `calibration sequences: expected a positive integer, got ${count}`);
  if (!Number.isInteger(length) || length < 2) throw new FluteError('E_OPTION', `calibration length: expected an integer >= 2, got ${length}`);
  const available = Math.floor(tokens.length / length);
  if (available < count) {
    throw new FluteError('E_OPTION', `${what}: ${count} sequences of ${length} tokens need ${count * length} tokens, but it has ${tokens.length} (room for ${available}); lower the sequences or the length, or give more text`);
  }
  return Array.from({ length: count }, (_, i) => Int32Array.from({ length }, (_, j) => tokens[i * length + j]));
}
