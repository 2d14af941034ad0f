// Adam (Kingma & Ba 2015) exactly as torch.optim.Adam with its defaults (betas 0.9/0.999, eps 1e-8,
// no weight decay, bias-corrected), which FLUTE's NFL uses. Updates f64 parameter arrays in place.

import { checkOption } from '../errors.js';
import type { F64 } from './layers.js';

export interface AdamOptions {
  readonly lr: number;
  readonly beta1?: number; // default 0.9
  readonly beta2?: number; // default 0.999
  readonly eps?: number; // default 1e-8
}

export class Adam {
  private readonly m: F64[]; // first moments, one per parameter array
  private readonly v: F64[]; // second moments
  private t = 0; // steps taken
  lr: number; // may be changed between steps (a schedule)
  private readonly b1: number;
  private readonly b2: number;
  private readonly eps: number;

  constructor(private readonly params: readonly F64[], opts: AdamOptions) {
    checkOption(Number.isFinite(opts.lr) && opts.lr > 0, 'lr', 'a positive number', opts.lr);
    this.lr = opts.lr;
    this.b1 = opts.beta1 ?? 0.9;
    this.b2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.m = params.map((p) => new Float64Array(p.length));
    this.v = params.map((p) => new Float64Array(p.length));
  }

  /** p -= lr * mhat / (sqrt(vhat) + eps), with mhat = m / (1 - b1^t), vhat = v / (1 - b2^t). */
  step(grads: readonly F64[]): void {
    this.t++;
    const c1 = 1 - this.b1 ** this.t;
    const c2 = 1 - this.b2 ** this.t;
    for (let a = 0; a < this.params.length; a++) {
      const p = this.params[a], g = grads[a], m = this.m[a], v = this.v[a];
      for (let i = 0; i < p.length; i++) {
        m[i] = this.b1 * m[i] + (1 - this.b1) * g[i];
        v[i] = this.b2 * v[i] + (1 - this.b2) * g[i] * g[i];
        p[i] -= (this.lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + this.eps);
      }
    }
  }
}
