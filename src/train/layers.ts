// The LLaMA layers for training, in llm.c's style: per layer kind, a forward that keeps what its
// backward needs and the backward right beside it, plain loops over row-major Float64Array. Model
// assembly (which activations to keep, in what order to call these) is model.ts's job.
//
// Conventions (llm.c): T rows (tokens), shapes in trailing comments; every backward ACCUMULATES (+=)
// into its gradient outputs, so a caller zeroes them once and branches that share an input (q, k and
// v read the same normed x; the residual stream) simply add up. f64 throughout: gradients are summed
// over tens of thousands of terms, and the finite-difference checks (test/backward.test.ts) are then
// good to ~1e-9 rather than to f32's ~1e-3.

import { ropeTables as inferenceRopeTables, type RopeConfig } from '../model/llama.js';

export type F64 = Float64Array;

// ---------------------------------------------------------------------------------------------
// Token embedding (model.embed_tokens)

/** out[t, :] = wte[tokens[t], :] */
export function encoderForward(out: F64, tokens: ArrayLike<number>, wte: F64, T: number, C: number): void {
  // out [T, C], tokens [T], wte [V, C]
  for (let t = 0; t < T; t++) {
    const src = tokens[t] * C;
    for (let c = 0; c < C; c++) out[t * C + c] = wte[src + c];
  }
}

/** dwte[tokens[t], :] += dout[t, :] */
export function encoderBackward(dwte: F64, dout: F64, tokens: ArrayLike<number>, T: number, C: number): void {
  // dwte [V, C], dout [T, C], tokens [T]
  for (let t = 0; t < T; t++) {
    const dst = tokens[t] * C;
    for (let c = 0; c < C; c++) dwte[dst + c] += dout[t * C + c];
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (input_layernorm, post_attention_layernorm, model.norm)

/** out[t, j] = w[j] * x[t, j] * rstd[t], rstd[t] = 1 / sqrt(mean_j x[t, j]^2 + eps). Saves rstd. */
export function rmsnormForward(out: F64, rstd: F64, inp: F64, w: F64, T: number, C: number, eps: number): void {
  // out [T, C], rstd [T], inp [T, C], w [C]
  for (let t = 0; t < T; t++) {
    const o = t * C;
    let ss = 0;
    for (let j = 0; j < C; j++) ss += inp[o + j] * inp[o + j];
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = r;
    for (let j = 0; j < C; j++) out[o + j] = w[j] * (r * inp[o + j]);
  }
}

/**
 * With y_j = w_j x_j r and dr/dx_i = -r^3 x_i / C:
 *   dx_i += r w_i dy_i - (r^3 / C) x_i sum_j w_j dy_j x_j,   dw_j += sum_t dy_j x_j r.
 */
export function rmsnormBackward(dinp: F64, dw: F64 | null, dout: F64, inp: F64, w: F64, rstd: F64, T: number, C: number): void {
  // dinp [T, C], dw [C] or null, dout [T, C], inp [T, C], w [C], rstd [T]
  for (let t = 0; t < T; t++) {
    const o = t * C;
    const r = rstd[t];
    let dot = 0; // sum_j w_j dy_j x_j
    for (let j = 0; j < C; j++) dot += w[j] * dout[o + j] * inp[o + j];
    const k = (r * r * r * dot) / C;
    for (let j = 0; j < C; j++) dinp[o + j] += r * w[j] * dout[o + j] - k * inp[o + j];
    if (dw) for (let j = 0; j < C; j++) dw[j] += dout[o + j] * inp[o + j] * r;
  }
}

// ---------------------------------------------------------------------------------------------
// Linear layer, y = x W^T (every projection and the classifier)

/**
 * out[M, N] (+)= a[M, K] b[N, K]^T: both operands read along K, contiguously. Blocks of 2 rows x 4
 * columns keep eight sums in registers and load each element once per block, which runs about twice
 * as fast in V8 as one dot product at a time. `accumulate` adds into out instead of overwriting it.
 */
export function gemmNT(out: F64, a: F64, b: F64, M: number, K: number, N: number, accumulate: boolean): void {
  // out [M, N], a [M, K], b [N, K]
  let m = 0;
  for (; m + 1 < M; m += 2) {
    const a0 = m * K, a1 = a0 + K;
    const o0 = m * N, o1 = o0 + N;
    let n = 0;
    for (; n + 3 < N; n += 4) {
      const b0 = n * K, b1 = b0 + K, b2 = b1 + K, b3 = b2 + K;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      for (let k = 0; k < K; k++) {
        const u = a[a0 + k], v = a[a1 + k];
        const w0 = b[b0 + k], w1 = b[b1 + k], w2 = b[b2 + k], w3 = b[b3 + k];
        s00 += u * w0; s01 += u * w1; s02 += u * w2; s03 += u * w3;
        s10 += v * w0; s11 += v * w1; s12 += v * w2; s13 += v * w3;
      }
      if (accumulate) {
        out[o0 + n] += s00; out[o0 + n + 1] += s01; out[o0 + n + 2] += s02; out[o0 + n + 3] += s03;
        out[o1 + n] += s10; out[o1 + n + 1] += s11; out[o1 + n + 2] += s12; out[o1 + n + 3] += s13;
      } else {
        out[o0 + n] = s00; out[o0 + n + 1] = s01; out[o0 + n + 2] = s02; out[o0 + n + 3] = s03;
        out[o1 + n] = s10; out[o1 + n + 1] = s11; out[o1 + n + 2] = s12; out[o1 + n + 3] = s13;
      }
    }
    for (; n < N; n++) {
      const b0 = n * K;
      let s0 = 0, s1 = 0;
      for (let k = 0; k < K; k++) {
        s0 += a[a0 + k] * b[b0 + k];
        s1 += a[a1 + k] * b[b0 + k];
      }
      out[o0 + n] = accumulate ? out[o0 + n] + s0 : s0;
      out[o1 + n] = accumulate ? out[o1 + n] + s1 : s1;
    }
  }
  for (; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[n * K + k];
      out[m * N + n] = accumulate ? out[m * N + n] + s : s;
    }
  }
}

/** dst[cols, rows] = src[rows, cols]^T */
export function transpose(dst: F64, src: F64, rows: number, cols: number): F64 {
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
  return dst;
}

// Scratch matrices (transposed copies, one head's slices), by name, grown on demand and reused
// across calls: JS runs this single-threaded, and it spares the collector ~1 MB per step.
const scratchPool = new Map<string, F64>();
function scratch(name: string, n: number): F64 {
  let a = scratchPool.get(name);
  if (!a || a.length < n) scratchPool.set(name, (a = new Float64Array(n)));
  return a;
}

/** out[t, n] = sum_k inp[t, k] w[n, k] */
export function matmulForward(out: F64, inp: F64, w: F64, T: number, K: number, N: number): void {
  // out [T, N], inp [T, K], w [N, K]
  gemmNT(out, inp, w, T, K, N, false);
}

/**
 * dinp[t, k] += sum_n dout[t, n] w[n, k]   (= dout (W^T)^T, one gemmNT against W^T)
 * dw[n, k]   += sum_t dout[t, n] inp[t, k] (= dout^T inp, one gemmNT of dout^T against inp^T)
 * Either is skipped when its buffer is null (frozen weights, or an input that needs no gradient).
 */
export function matmulBackward(dinp: F64 | null, dw: F64 | null, dout: F64, inp: F64, w: F64, T: number, K: number, N: number): void {
  // dinp [T, K], dw [N, K], dout [T, N], inp [T, K], w [N, K]
  if (dinp) gemmNT(dinp, dout, transpose(scratch('wt', K * N), w, N, K), T, N, K, true);
  if (dw) {
    const doutT = transpose(scratch('doutT', N * T), dout, T, N); // [N, T]
    const inpT = transpose(scratch('inpT', K * T), inp, T, K); // [K, T]
    gemmNT(dw, doutT, inpT, N, T, K, true);
  }
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding, in place on q or k

export type RopeTables = { readonly cos: F64; readonly sin: F64 }; // each [T, hd/2]

/**
 * cos/sin of position p times pair i's frequency for p = 0..T-1, [T, hd/2] each: the inference pass's
 * own tables (src/model/llama.ts ropeTables, config.ropeScaling applied, values rounded to f32), so the
 * training pass rotates exactly as the model it learns scales for.
 */
export function ropeTables(T: number, rope: RopeConfig): RopeTables {
  const { cos, sin } = inferenceRopeTables(rope, T);
  return { cos: Float64Array.from(cos), sin: Float64Array.from(sin) };
}

/**
 * Rotates pair (a, b) of each head by the position's angle: interleaved layout pairs (2i, 2i+1),
 * half layout pairs (i, i + hd/2). sign = +1 is the forward rotation, -1 its transpose (backward:
 * a rotation's Jacobian is the rotation itself, so dx = R^T dy).
 */
function rotate(x: F64, T: number, heads: number, hd: number, interleaved: boolean, tab: RopeTables, sign: 1 | -1): void {
  // x [T, heads*hd]
  const half = hd / 2;
  const step = interleaved ? 2 : 1;
  const partner = interleaved ? 1 : half;
  const width = heads * hd;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const a = t * width + h * hd + i * step;
        const b = a + partner;
        const c = tab.cos[t * half + i], s = sign * tab.sin[t * half + i];
        const x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
      }
    }
  }
}

/** In place: x [T, heads*hd] at positions 0..T-1. */
export function ropeForward(x: F64, T: number, heads: number, hd: number, interleaved: boolean, tab: RopeTables): void {
  rotate(x, T, heads, hd, interleaved, tab, 1);
}

/** In place: dx = R^T dy, with dy [T, heads*hd] given in dx. */
export function ropeBackward(dx: F64, T: number, heads: number, hd: number, interleaved: boolean, tab: RopeTables): void {
  rotate(dx, T, heads, hd, interleaved, tab, -1);
}

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention

export interface AttentionShape {
  readonly T: number;
  readonly H: number; // query heads
  readonly Hkv: number; // key/value heads; query head h reads kv head floor(h / (H / Hkv))
  readonly hd: number; // head size
}

/** Copies head `h` ([T, hd] at column h*hd of a [T, heads*hd] matrix) into dst, transposed if asked. */
function gatherHead(dst: F64, src: F64, T: number, width: number, h: number, hd: number, transposed: boolean): F64 {
  for (let t = 0; t < T; t++) {
    for (let d = 0; d < hd; d++) {
      const x = src[t * width + h * hd + d];
      if (transposed) dst[d * T + t] = x;
      else dst[t * hd + d] = x;
    }
  }
  return dst;
}

/** dst[:, h*hd..] += src [T, hd] */
function scatterAddHead(dst: F64, src: F64, T: number, width: number, h: number, hd: number): void {
  for (let t = 0; t < T; t++) for (let d = 0; d < hd; d++) dst[t * width + h * hd + d] += src[t * hd + d];
}

/**
 * Per query head h with kv head j = floor(h / (H/Hkv)), as matrices ([T, hd] slices Qh, Kj, Vj):
 *   S = Qh Kj^T / sqrt(hd);  P = softmax_rows(S with u > t masked);  Oh = P Vj.
 * Saves P in att (the masked upper triangle holds zeros). The products run through gemmNT on the full
 * square; twice the multiplies of a triangular loop, but at gemmNT's speed that is still faster.
 */
export function attentionForward(out: F64, att: F64, q: F64, k: F64, v: F64, s: AttentionShape): void {
  // out [T, H*hd], att [H, T, T], q [T, H*hd], k [T, Hkv*hd], v [T, Hkv*hd]
  const { T, H, Hkv, hd } = s;
  const qDim = H * hd, kvDim = Hkv * hd, group = H / Hkv;
  const scale = 1 / Math.sqrt(hd);
  const Qh = scratch('qh', T * hd), Kj = scratch('kj', T * hd), VjT = scratch('vjt', hd * T), Oh = scratch('oh', T * hd);
  for (let h = 0; h < H; h++) {
    const j = Math.floor(h / group);
    if (h % group === 0) {
      gatherHead(Kj, k, T, kvDim, j, hd, false);
      gatherHead(VjT, v, T, kvDim, j, hd, true);
    }
    const P = att.subarray(h * T * T, (h + 1) * T * T); // [T, T]
    gemmNT(P, gatherHead(Qh, q, T, qDim, h, hd, false), Kj, T, hd, T, false);
    for (let t = 0; t < T; t++) {
      const row = t * T;
      let max = -Infinity;
      for (let u = 0; u <= t; u++) {
        P[row + u] *= scale;
        if (P[row + u] > max) max = P[row + u];
      }
      let sum = 0;
      for (let u = 0; u <= t; u++) sum += P[row + u] = Math.exp(P[row + u] - max);
      const inv = 1 / sum;
      for (let u = 0; u <= t; u++) P[row + u] *= inv;
      P.fill(0, row + t + 1, row + T);
    }
    gemmNT(Oh, P, VjT, T, T, hd, false);
    for (let t = 0; t < T; t++) for (let d = 0; d < hd; d++) out[t * qDim + h * hd + d] = Oh[t * hd + d];
  }
}

/**
 * Backward of attentionForward, per query head (llm.c attention_backward, as matrices):
 *   dP = dOh Vj^T;  dVj += P^T dOh;
 *   dS = P * (dP - rowsum(P * dP)) / sqrt(hd)   (softmax Jacobian; zero where masked, since P is);
 *   dQh += dS Kj;  dKj += dS^T Qh.
 */
export function attentionBackward(dq: F64, dk: F64, dv: F64, dout: F64, att: F64, q: F64, k: F64, v: F64, s: AttentionShape): void {
  // dq [T, H*hd], dk/dv [T, Hkv*hd], dout [T, H*hd], att [H, T, T]
  const { T, H, Hkv, hd } = s;
  const qDim = H * hd, kvDim = Hkv * hd, group = H / Hkv;
  const scale = 1 / Math.sqrt(hd);
  const Vj = scratch('vj', T * hd), KjT = scratch('kjt', hd * T), QhT = scratch('qht', hd * T);
  const dOh = scratch('doh', T * hd), dOhT = scratch('doht', hd * T), dQh = scratch('dqh', T * hd);
  const dKj = scratch('dkj', T * hd), dVj = scratch('dvj', T * hd);
  const dS = scratch('ds', T * T), PT = scratch('pt', T * T), dST = scratch('dst', T * T);
  for (let h = 0; h < H; h++) {
    const j = Math.floor(h / group);
    if (h % group === 0) {
      gatherHead(Vj, v, T, kvDim, j, hd, false);
      gatherHead(KjT, k, T, kvDim, j, hd, true);
      dKj.fill(0, 0, T * hd);
      dVj.fill(0, 0, T * hd);
    }
    const P = att.subarray(h * T * T, (h + 1) * T * T); // [T, T]
    gatherHead(dOh, dout, T, qDim, h, hd, false);
    gatherHead(dOhT, dout, T, qDim, h, hd, true);
    gatherHead(QhT, q, T, qDim, h, hd, true);
    gemmNT(dVj, transpose(PT, P, T, T), dOhT, T, T, hd, true);
    gemmNT(dS, dOh, Vj, T, hd, T, false); // dP, turned into dS in place below
    for (let t = 0; t < T; t++) {
      const row = t * T;
      let dot = 0;
      for (let u = 0; u <= t; u++) dot += P[row + u] * dS[row + u];
      for (let u = 0; u <= t; u++) dS[row + u] = P[row + u] * (dS[row + u] - dot) * scale;
      dS.fill(0, row + t + 1, row + T);
    }
    gemmNT(dQh, dS, KjT, T, T, hd, false);
    scatterAddHead(dq, dQh, T, qDim, h, hd);
    gemmNT(dKj, transpose(dST, dS, T, T), QhT, T, T, hd, true);
    if (h % group === group - 1) {
      scatterAddHead(dk, dKj, T, kvDim, j, hd);
      scatterAddHead(dv, dVj, T, kvDim, j, hd);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU (mlp: silu(gate_proj x) * up_proj x)

/** out = silu(gate) * up, silu(g) = g * sigmoid(g). */
export function swigluForward(out: F64, gate: F64, up: F64, n: number): void {
  // out, gate, up [T*hiddenDim]
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/** dgate += dout up silu'(g), silu'(g) = sig(g) (1 + g (1 - sig(g))); dup += dout silu(g). */
export function swigluBackward(dgate: F64, dup: F64, dout: F64, gate: F64, up: F64, n: number): void {
  // dgate, dup, dout, gate, up [T*hiddenDim]
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    const sig = 1 / (1 + Math.exp(-g));
    dgate[i] += dout[i] * up[i] * sig * (1 + g * (1 - sig));
    dup[i] += dout[i] * g * sig;
  }
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy (the next-token loss)

/**
 * probs[t] = softmax(logits[t]); returns the mean over t of -log probs[t, targets[t]] (nats/token).
 * Saves probs.
 */
export function crossEntropyForward(probs: F64, logits: F64, targets: ArrayLike<number>, T: number, V: number): number {
  // probs [T, V], logits [T, V], targets [T]
  let total = 0;
  for (let t = 0; t < T; t++) {
    const o = t * V;
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (logits[o + i] > max) max = logits[o + i];
    let sum = 0;
    for (let i = 0; i < V; i++) sum += probs[o + i] = Math.exp(logits[o + i] - max);
    for (let i = 0; i < V; i++) probs[o + i] /= sum;
    // -log p = logsumexp - logit, computed this way so a tiny probability does not underflow to log(0).
    total += max + Math.log(sum) - logits[o + targets[t]];
  }
  return total / T;
}

/** Gradient of the mean loss: dlogits[t] += (probs[t] - onehot(targets[t])) / T. */
export function crossEntropyBackward(dlogits: F64, probs: F64, targets: ArrayLike<number>, T: number, V: number): void {
  // dlogits [T, V], probs [T, V], targets [T]
  const inv = 1 / T;
  for (let t = 0; t < T; t++) {
    const o = t * V;
    for (let i = 0; i < V; i++) dlogits[o + i] += probs[o + i] * inv;
    dlogits[o + targets[t]] -= inv;
  }
}

/** a[i] += b[i] (residual connections: the forward adds a branch, the backward copies its gradient). */
export function addInPlace(a: F64, b: F64, n: number): void {
  for (let i = 0; i < n; i++) a[i] += b[i];
}
