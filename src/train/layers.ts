// The LLaMA layers for training, in llm.c's style: per layer kind, a forward that keeps what its
// backward needs and the backward right beside it, plain loops over row-major Float64Array. Model
// assembly (which activations to keep, in what order to call these) is model.ts's job.
//
// Conventions (llm.c): T rows (tokens), shapes in trailing comments; every backward ACCUMULATES (+=)
// into its gradient outputs, so a caller zeroes them once and branches that share an input (q, k and
// v read the same normed x; the residual stream) simply add up. f64 throughout: gradients are summed
// over tens of thousands of terms, and the finite-difference checks (test/backward.test.ts) are then
// good to ~1e-9 rather than to f32's ~1e-3.

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

/** out[t, n] = sum_k inp[t, k] w[n, k] */
export function matmulForward(out: F64, inp: F64, w: F64, T: number, K: number, N: number): void {
  // out [T, N], inp [T, K], w [N, K]
  for (let t = 0; t < T; t++) {
    const xo = t * K;
    for (let n = 0; n < N; n++) {
      const wo = n * K;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0; // four partial sums let V8 overlap the multiplies
      let k = 0;
      for (; k + 3 < K; k += 4) {
        a0 += inp[xo + k] * w[wo + k];
        a1 += inp[xo + k + 1] * w[wo + k + 1];
        a2 += inp[xo + k + 2] * w[wo + k + 2];
        a3 += inp[xo + k + 3] * w[wo + k + 3];
      }
      for (; k < K; k++) a0 += inp[xo + k] * w[wo + k];
      out[t * N + n] = a0 + a1 + (a2 + a3);
    }
  }
}

/** dinp += dout W (skipped when null), dw += dout^T inp (skipped when null: frozen, or not needed). */
export function matmulBackward(dinp: F64 | null, dw: F64 | null, dout: F64, inp: F64, w: F64, T: number, K: number, N: number): void {
  // dinp [T, K], dw [N, K], dout [T, N], inp [T, K], w [N, K]
  if (dinp) {
    for (let t = 0; t < T; t++) {
      const xo = t * K;
      for (let n = 0; n < N; n++) {
        const d = dout[t * N + n];
        if (d === 0) continue;
        const wo = n * K;
        for (let k = 0; k < K; k++) dinp[xo + k] += d * w[wo + k];
      }
    }
  }
  if (dw) {
    for (let n = 0; n < N; n++) {
      const wo = n * K;
      for (let t = 0; t < T; t++) {
        const d = dout[t * N + n];
        if (d === 0) continue;
        const xo = t * K;
        for (let k = 0; k < K; k++) dw[wo + k] += d * inp[xo + k];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding, in place on q or k

export type RopeTables = { readonly cos: F64; readonly sin: F64 }; // each [T, hd/2]

/** cos/sin of pos * theta^(-2i/hd) for positions 0..T-1, the frequencies src/model/llama.ts uses. */
export function ropeTables(T: number, hd: number, theta: number): RopeTables {
  const half = hd / 2;
  const cos = new Float64Array(T * half);
  const sin = new Float64Array(T * half);
  for (let p = 0; p < T; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * Math.pow(theta, (-2 * i) / hd);
      // Rounded to f32 as the inference pass stores them, so both compute the same function.
      cos[p * half + i] = Math.fround(Math.cos(angle));
      sin[p * half + i] = Math.fround(Math.sin(angle));
    }
  }
  return { cos, sin };
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

/**
 * out[t, h] = sum_{u <= t} att[h, t, u] v[u, kv(h)], att[h, t, :] = softmax_u(q[t, h] . k[u, kv(h)] / sqrt(hd)).
 * Saves att (only u <= t is written and read).
 */
export function attentionForward(out: F64, att: F64, q: F64, k: F64, v: F64, s: AttentionShape): void {
  // out [T, H*hd], att [H, T, T], q [T, H*hd], k [T, Hkv*hd], v [T, Hkv*hd]
  const { T, H, Hkv, hd } = s;
  const qDim = H * hd, kvDim = Hkv * hd, group = H / Hkv;
  const scale = 1 / Math.sqrt(hd);
  for (let h = 0; h < H; h++) {
    const kvo = Math.floor(h / group) * hd;
    for (let t = 0; t < T; t++) {
      const qo = t * qDim + h * hd;
      const row = h * T * T + t * T;
      let max = -Infinity;
      for (let u = 0; u <= t; u++) {
        const ko = u * kvDim + kvo;
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += q[qo + d] * k[ko + d];
        att[row + u] = dot * scale;
        if (att[row + u] > max) max = att[row + u];
      }
      let sum = 0;
      for (let u = 0; u <= t; u++) sum += att[row + u] = Math.exp(att[row + u] - max);
      const inv = 1 / sum;
      for (let u = 0; u <= t; u++) att[row + u] *= inv;
      for (let d = 0; d < hd; d++) out[qo + d] = 0;
      for (let u = 0; u <= t; u++) {
        const a = att[row + u];
        const vo = u * kvDim + kvo;
        for (let d = 0; d < hd; d++) out[qo + d] += a * v[vo + d];
      }
    }
  }
}

/**
 * Backward of attentionForward (llm.c attention_backward), per head and query row t:
 *   datt[u] = dout[t] . v[u];  dv[u] += att[u] dout[t];
 *   dpre[u] = att[u] (datt[u] - sum_w att[w] datt[w])          (softmax Jacobian)
 *   dq[t] += sum_u dpre[u] k[u] / sqrt(hd);  dk[u] += dpre[u] q[t] / sqrt(hd).
 * `scratch` holds one row of datt.
 */
export function attentionBackward(dq: F64, dk: F64, dv: F64, dout: F64, att: F64, q: F64, k: F64, v: F64, s: AttentionShape, scratch: F64): void {
  // dq [T, H*hd], dk/dv [T, Hkv*hd], dout [T, H*hd], att [H, T, T], scratch [T]
  const { T, H, Hkv, hd } = s;
  const qDim = H * hd, kvDim = Hkv * hd, group = H / Hkv;
  const scale = 1 / Math.sqrt(hd);
  const datt = scratch;
  for (let h = 0; h < H; h++) {
    const kvo = Math.floor(h / group) * hd;
    for (let t = 0; t < T; t++) {
      const qo = t * qDim + h * hd;
      const row = h * T * T + t * T;
      let sum = 0; // sum_u att[u] datt[u]
      for (let u = 0; u <= t; u++) {
        const vo = u * kvDim + kvo;
        const a = att[row + u];
        let dot = 0;
        for (let d = 0; d < hd; d++) {
          dot += dout[qo + d] * v[vo + d];
          dv[vo + d] += a * dout[qo + d];
        }
        datt[u] = dot;
        sum += a * dot;
      }
      for (let u = 0; u <= t; u++) {
        const dpre = att[row + u] * (datt[u] - sum) * scale;
        const ko = u * kvDim + kvo;
        for (let d = 0; d < hd; d++) {
          dq[qo + d] += dpre * k[ko + d];
          dk[ko + d] += dpre * q[qo + d];
        }
      }
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
