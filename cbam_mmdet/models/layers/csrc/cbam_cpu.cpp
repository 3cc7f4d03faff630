// The fused CBAM on CPU: forward and backward of (BatchNorm +) CBAM in one call each.  The
// design (what is read, recomputed and saved) is in native_cbam.py's docstring.
//
// Tensors are contiguous NCHW, T is float or double.  Every pass reads the block's input x and
// recomputes z = x * scale[c] + shift[c] (the normalised map) and y = z * Mc on the fly.
// Threads: OpenMP with the caller's (torch's) thread count, sharing torch's libgomp.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

using i64 = int64_t;

namespace {

// Elements summed in T before a partial sum is added in double: few enough terms per SIMD lane
// for float32 rounding to stay at the level of the eager ops', many enough to run at full speed.
constexpr i64 kBlock = 512;
// Pixels per tile of the passes that reduce over channels (their accumulators stay in L1).
constexpr i64 kTile = 512;

// Threads for a parallel loop of about ``work`` multiply-adds: small loops (the gates, the last
// stages' maps) run on one thread, where waking a second one costs more than it saves.
int team(i64 work, int threads) { return work >= (i64{1} << 16) ? threads : 1; }

// Work split of the passes that reduce over channels: jobs of one (sample, chunk of channels,
// tile of at most kTile pixels), in that order and statically scheduled, so that each thread reads
// the planes that the plane-wise passes (static over planes) give it: no thread reads what another
// core's cache holds, and a map that fits in the L2 caches stays there between passes.  At least
// one chunk per thread, more (of at least 32 channels) when a map has too few tiles to keep every
// thread busy (the last stages' small maps); per-pixel partial results are merged afterwards in
// channel order.
struct Split {
  i64 tile, tiles, chunk, chunks;
  Split(i64 n, i64 c, i64 hw, int threads) {
    tiles = (hw + kTile - 1) / kTile;
    tile = tiles == 1 ? hw : ((hw + tiles - 1) / tiles + 15) / 16 * 16;
    tiles = (hw + tile - 1) / tile;
    const i64 wanted = std::max<i64>(threads, (8 * threads + n * tiles - 1) / (n * tiles));
    chunks = std::max<i64>(1, std::min(wanted, c / 32));
    chunk = (c + chunks - 1) / chunks;
    chunks = (c + chunk - 1) / chunk;
  }
  i64 jobs(i64 n) const { return n * chunks * tiles; }
  // The job (and its slot of per-pixel partial results) of a sample, chunk and tile.
  i64 slot(i64 b, i64 chunk_index, i64 tile_index) const {
    return (b * chunks + chunk_index) * tiles + tile_index;
  }

  struct Job {
    i64 b, tile_index, c0, c1, p0, len;  // sample, tile, channels [c0, c1), pixels [p0, p0+len)
  };
  Job job(i64 index, i64 c, i64 hw) const {
    const i64 tile_index = index % tiles, c0 = index / tiles % chunks * chunk;
    const i64 p0 = tile_index * tile;
    return {index / (tiles * chunks), tile_index, c0, std::min(c, c0 + chunk), p0,
            std::min(tile, hw - p0)};
  }
};

// First index of ``value`` in p[0, len) (len - 1 if absent, e.g. NaN), searched in vectorised
// blocks.
template <typename T>
i64 first_index(const T* p, i64 len, T value) {
  constexpr i64 kSearch = 64;
  for (i64 i0 = 0; i0 < len; i0 += kSearch) {
    const i64 i1 = std::min(len, i0 + kSearch);
    i64 found = len;
#pragma omp simd reduction(min : found)
    for (i64 i = i0; i < i1; ++i) found = p[i] == value ? std::min(found, i) : found;
    if (found < len) return found;
  }
  return len - 1;
}

// Per plane (n, c) of x: sum, sum of squares, max, min and, when wanted, the first index of the
// one that is z's maximum: the max where the norm's weight (``sign``, null: none) is positive,
// the min where it is negative, neither where it is 0 (z constant: index 0).
template <typename T>
void plane_stats(const T* x, i64 planes, i64 c, i64 hw, const T* sign, double* sum,
                 double* sumsq, T* max_out, T* min_out, i64* argmax, i64* argmin,
                 int threads) {
#pragma omp parallel for num_threads(team(planes * hw, threads)) schedule(static)
  for (i64 q = 0; q < planes; ++q) {
    const T* p = x + q * hw;
    double s = 0, ss = 0;
    T hi = p[0], lo = p[0];
    for (i64 i0 = 0; i0 < hw; i0 += kBlock) {  // T sums over blocks, double across blocks
      const i64 i1 = std::min(hw, i0 + kBlock);
      T bs = 0, bss = 0;
#pragma omp simd reduction(+ : bs, bss) reduction(max : hi) reduction(min : lo)
      for (i64 i = i0; i < i1; ++i) {
        const T v = p[i];
        bs += v;
        bss += v * v;
        hi = v > hi ? v : hi;
        lo = v < lo ? v : lo;
      }
      s += bs;
      ss += bss;
    }
    sum[q] = s;
    sumsq[q] = ss;
    max_out[q] = hi;
    min_out[q] = lo;
    if (argmax != nullptr) {  // the plane is still in cache
      const T weight = sign != nullptr ? sign[q % c] : T(1);
      argmax[q] = weight > 0 ? first_index(p, hw, hi) : 0;
      argmin[q] = weight < 0 ? first_index(p, hw, lo) : 0;
    }
  }
}

// Per pixel (n, p) of y = (x * scale + shift) * mc: max over channels, its first channel (with
// kIndex) and the mean over channels.  Two channels per step halve the accumulators' traffic.
template <typename T, bool kIndex>
void channel_pool_impl(const T* x, i64 n, i64 c, i64 hw, const T* scale, const T* shift,
                       const T* mc, T* max_out, T* mean_out, i64* argmax, int threads) {
  const Split sp(n, c, hw, threads);
  const i64 parts = sp.jobs(n) * sp.tile;
  std::vector<T> part_max(parts), part_sum(parts);
  std::vector<int32_t> part_at(kIndex ? parts : 0);
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 job = 0; job < sp.jobs(n); ++job) {
    const auto [b, tile_index, c0, c1, p0, len] = sp.job(job, c, hw);
    T* hi = part_max.data() + job * sp.tile;
    T* acc = part_sum.data() + job * sp.tile;
    int32_t* at = kIndex ? part_at.data() + job * sp.tile : nullptr;
    const T* xb = x + b * c * hw + p0;
    const T* mcb = mc + b * c;
    {
      const T s = scale[c0], t = shift[c0], m = mcb[c0];
      const T* row = xb + c0 * hw;
#pragma omp simd
      for (i64 i = 0; i < len; ++i) {
        const T y = (row[i] * s + t) * m;
        hi[i] = y;
        acc[i] = y;
        if (kIndex) at[i] = static_cast<int32_t>(c0);
      }
    }
    i64 ch = c0 + 1;
    for (; ch + 1 < c1; ch += 2) {
      const T* row0 = xb + ch * hw;
      const T* row1 = row0 + hw;
      const T s0 = scale[ch], t0 = shift[ch], m0 = mcb[ch];
      const T s1 = scale[ch + 1], t1 = shift[ch + 1], m1 = mcb[ch + 1];
      const int32_t i0 = static_cast<int32_t>(ch), i1 = i0 + 1;
#pragma omp simd
      for (i64 i = 0; i < len; ++i) {
        const T y0 = (row0[i] * s0 + t0) * m0, y1 = (row1[i] * s1 + t1) * m1;
        acc[i] = (acc[i] + y0) + y1;
        T top = hi[i];
        int32_t where = kIndex ? at[i] : 0;
        if (kIndex) where = y0 > top ? i0 : where;  // strict: the first maximum wins
        top = y0 > top ? y0 : top;
        if (kIndex) where = y1 > top ? i1 : where;
        top = y1 > top ? y1 : top;
        hi[i] = top;
        if (kIndex) at[i] = where;
      }
    }
    for (; ch < c1; ++ch) {
      const T* row = xb + ch * hw;
      const T s = scale[ch], t = shift[ch], m = mcb[ch];
#pragma omp simd
      for (i64 i = 0; i < len; ++i) {
        const T y = (row[i] * s + t) * m;
        acc[i] += y;
        if (kIndex) at[i] = y > hi[i] ? static_cast<int32_t>(ch) : at[i];
        hi[i] = y > hi[i] ? y : hi[i];
      }
    }
  }
  // Merge the chunks of each tile in channel order.
  for (i64 b = 0; b < n; ++b)
    for (i64 tile_index = 0; tile_index < sp.tiles; ++tile_index) {
      const i64 p0 = tile_index * sp.tile, len = std::min(sp.tile, hw - p0);
      const i64 first = sp.slot(b, 0, tile_index) * sp.tile;
      for (i64 i = 0; i < len; ++i) {
        T top = part_max[first + i], sum = part_sum[first + i];
        int32_t where = kIndex ? part_at[first + i] : 0;
        for (i64 k = 1; k < sp.chunks; ++k) {
          const i64 at = sp.slot(b, k, tile_index) * sp.tile + i;
          sum += part_sum[at];
          if (part_max[at] > top) {
            top = part_max[at];
            if (kIndex) where = part_at[at];
          }
        }
        max_out[b * hw + p0 + i] = top;
        mean_out[b * hw + p0 + i] = sum / static_cast<T>(c);
        if (kIndex) argmax[b * hw + p0 + i] = where;
      }
    }
}

template <typename T>
void channel_pool(const T* x, i64 n, i64 c, i64 hw, const T* scale, const T* shift, const T* mc,
                  T* max_out, T* mean_out, i64* argmax, int threads) {
  if (argmax != nullptr)
    channel_pool_impl<T, true>(x, n, c, hw, scale, shift, mc, max_out, mean_out, argmax, threads);
  else
    channel_pool_impl<T, false>(x, n, c, hw, scale, shift, mc, max_out, mean_out, argmax,
                                threads);
}

// out = (x * scale + shift) * mc * ms: the CBAM output, y = z * Mc rounded as the eager module.
// With a shortcut (inference), the end of the residual block instead: relu(out + shortcut).
template <typename T>
void apply_gates(const T* x, i64 n, i64 c, i64 hw, const T* scale, const T* shift, const T* mc,
                 const T* ms, const T* shortcut, T* out, int threads) {
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 q = 0; q < n * c; ++q) {
    const i64 b = q / c, ch = q % c;
    const T s = scale[ch], t = shift[ch], m = mc[q];
    const T* xp = x + q * hw;
    const T* msb = ms + b * hw;
    T* op = out + q * hw;
    if (shortcut == nullptr) {
#pragma omp simd
      for (i64 i = 0; i < hw; ++i) op[i] = ((xp[i] * s + t) * m) * msb[i];
    } else {
      const T* sp = shortcut + q * hw;
#pragma omp simd
      for (i64 i = 0; i < hw; ++i) {
        const T sum = ((xp[i] * s + t) * m) * msb[i] + sp[i];
        op[i] = sum < T(0) ? T(0) : sum;  // NaN passes, as torch.relu
      }
    }
  }
}

// Backward, first pass over (g, x): dL/dMs per pixel, sum_c g * y, and per plane
// sum_p g * Ms and sum_p g * Ms * x.
template <typename T>
void grad_pass1(const T* g, const T* x, i64 n, i64 c, i64 hw, const T* scale, const T* shift,
                const T* mc, const T* ms, T* grad_ms, double* gms_sum, double* gms_x_sum,
                int threads) {
  const Split sp(n, c, hw, threads);
  std::vector<T> part_acc(sp.jobs(n) * sp.tile);
  std::vector<double> partial(static_cast<size_t>(2 * n * sp.tiles * c));
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 job = 0; job < sp.jobs(n); ++job) {
    const auto [b, tile_index, c0, c1, p0, len] = sp.job(job, c, hw);
    T* acc = part_acc.data() + job * sp.tile;
    for (i64 i = 0; i < len; ++i) acc[i] = 0;
    const T* msb = ms + b * hw + p0;
    double* part = partial.data() + 2 * (b * sp.tiles + tile_index) * c;
    for (i64 ch = c0; ch < c1; ++ch) {
      const i64 offset = (b * c + ch) * hw + p0;
      const T* gp = g + offset;
      const T* xp = x + offset;
      const T s = scale[ch], t = shift[ch], m = mc[b * c + ch];
      T gms = 0, gmsx = 0;  // at most kTile terms
#pragma omp simd reduction(+ : gms, gmsx)
      for (i64 i = 0; i < len; ++i) {
        const T y = (xp[i] * s + t) * m;
        acc[i] += gp[i] * y;
        const T gm = gp[i] * msb[i];
        gms += gm;
        gmsx += gm * xp[i];
      }
      part[2 * ch] = gms;
      part[2 * ch + 1] = gmsx;
    }
  }
  for (i64 b = 0; b < n; ++b)
    for (i64 tile_index = 0; tile_index < sp.tiles; ++tile_index) {
      const i64 p0 = tile_index * sp.tile, len = std::min(sp.tile, hw - p0);
      for (i64 i = 0; i < len; ++i) {
        T sum = part_acc[sp.slot(b, 0, tile_index) * sp.tile + i];
        for (i64 k = 1; k < sp.chunks; ++k)
          sum += part_acc[sp.slot(b, k, tile_index) * sp.tile + i];
        grad_ms[b * hw + p0 + i] = sum;
      }
    }
  for (i64 b = 0; b < n; ++b)
    for (i64 ch = 0; ch < c; ++ch) {
      double gms = 0, gmsx = 0;
      for (i64 k = 0; k < sp.tiles; ++k) {
        const double* part = partial.data() + 2 * ((b * sp.tiles + k) * c + ch);
        gms += part[0];
        gmsx += part[1];
      }
      gms_sum[b * c + ch] = gms;
      gms_x_sum[b * c + ch] = gmsx;
    }
}

// Backward, second pass over x: per plane sum_p w[n, p] * x[n, c, p].
template <typename T>
void weighted_plane_sums(const T* x, const T* w, i64 n, i64 c, i64 hw, double* out,
                         int threads) {
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 q = 0; q < n * c; ++q) {
    const T* xp = x + q * hw;
    const T* wb = w + (q / c) * hw;
    double s = 0;
    for (i64 i0 = 0; i0 < hw; i0 += kBlock) {
      const i64 i1 = std::min(hw, i0 + kBlock);
      T bs = 0;
#pragma omp simd reduction(+ : bs)
      for (i64 i = i0; i < i1; ++i) bs += wb[i] * xp[i];
      s += bs;
    }
    out[q] = s;
  }
}

// Backward, last pass: the input gradient
//   dx = coef_g[n, c] * (g * Ms[n, p] + grad_mean[n, p]) + coef_0[n, c] + coef_x[c] * x
// plus the max-pooling routes: route_pixel_value[n, p] at channel route_channel[n, p] and
// route_plane_value[n, c] at pixel route_pixel[n, c] (each pair nullable).
template <typename T>
void grad_input(const T* g, const T* x, i64 n, i64 c, i64 hw, const T* ms, const T* grad_mean,
                const T* coef_g, const T* coef_0, const T* coef_x, const i64* route_channel,
                const T* route_pixel_value, const i64* route_pixel, const T* route_plane_value,
                T* dx, int threads) {
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 q = 0; q < n * c; ++q) {
    const i64 b = q / c, ch = q % c;
    const T a = coef_g[q], k = coef_0[q], r = coef_x[ch];
    const T* gp = g + q * hw;
    const T* xp = x + q * hw;
    const T* msb = ms + b * hw;
    const T* gmb = grad_mean + b * hw;
    T* out = dx + q * hw;
#pragma omp simd
    for (i64 i = 0; i < hw; ++i) out[i] = a * (gp[i] * msb[i] + gmb[i]) + k + r * xp[i];
  }
  if (route_channel != nullptr)
    for (i64 b = 0; b < n; ++b)
      for (i64 i = 0; i < hw; ++i)
        dx[(b * c + route_channel[b * hw + i]) * hw + i] += route_pixel_value[b * hw + i];
  if (route_pixel != nullptr)
    for (i64 q = 0; q < n * c; ++q) dx[q * hw + route_pixel[q]] += route_plane_value[q];
}

// ---- The gates' small sub-networks (default configuration: MLP Linear-ReLU-Linear; k x k
// conv, optionally BatchNorm(1), sigmoid).  Norm modes: 0 none, 1 training (batch statistics,
// running statistics updated), 2 evaluation (running statistics).

template <typename T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// BatchNorm before CBAM from the plane statistics, the channel descriptors of z, and the MLP:
// Mc = sigmoid(sum_p W2 relu(W1 d_p + b1) + b2).  desc (P, N, C) and hid (P, N, hidden) are kept
// for backward; pools are avg (if use_avg) then max (if use_max).
template <typename T>
void channel_gate_forward(i64 n, i64 c, i64 hw, const double* sums, const double* sumsq,
                          const T* maxima, const T* minima, const i64* argmax,
                          const i64* argmin, int norm_mode, const T* bn_weight, const T* bn_bias,
                          T* running_mean, T* running_var, double eps, double momentum,
                          i64 hidden, const T* w1, const T* b1, const T* w2, const T* b2,
                          int use_avg, int use_max, T* scale, T* shift, double* mean,
                          double* invstd, T* desc, T* hid, T* mc, i64* pixel_of_max,
                          int threads) {
  const double count = static_cast<double>(n * hw);
  for (i64 ch = 0; ch < c; ++ch) {
    double sc = 1, sh = 0;
    if (norm_mode != 0) {
      double mu, var;
      if (norm_mode == 1) {
        double s = 0, ss = 0;
        for (i64 b = 0; b < n; ++b) {
          s += sums[b * c + ch];
          ss += sumsq[b * c + ch];
        }
        mu = s / count;
        var = std::max(ss / count - mu * mu, 0.0);
        running_mean[ch] = static_cast<T>(momentum * mu + (1 - momentum) * running_mean[ch]);
        running_var[ch] = static_cast<T>(momentum * var * count / (count - 1) +
                                         (1 - momentum) * running_var[ch]);
      } else {
        mu = running_mean[ch];
        var = running_var[ch];
      }
      const double is = 1.0 / std::sqrt(var + eps);
      mean[ch] = mu;
      invstd[ch] = is;
      sc = bn_weight[ch] * is;
      sh = bn_bias[ch] - mu * sc;
    }
    scale[ch] = static_cast<T>(sc);
    shift[ch] = static_cast<T>(sh);
    for (i64 b = 0; b < n; ++b) {
      const i64 q = b * c + ch;
      i64 p = 0;
      if (use_avg) desc[q] = static_cast<T>(sums[q] / hw * sc + sh), p = 1;
      if (use_max) {
        const bool pos = sc > 0, neg = sc < 0;
        const double extreme = pos ? static_cast<double>(maxima[q]) : minima[q];
        desc[p * n * c + q] = static_cast<T>(pos || neg ? extreme * sc + sh : sh);
        if (pixel_of_max != nullptr) pixel_of_max[q] = pos ? argmax[q] : neg ? argmin[q] : 0;
      }
    }
  }
  const i64 pools = use_avg + use_max, rows = pools * n;
#pragma omp parallel for num_threads(team(hidden * rows * c, threads)) schedule(static)
  for (i64 j = 0; j < hidden; ++j)
    for (i64 r = 0; r < rows; ++r) {
      const T* d = desc + r * c;
      const T* wj = w1 + j * c;
      T acc = 0;  // T accumulation, as the eager Linear
#pragma omp simd reduction(+ : acc)
      for (i64 i = 0; i < c; ++i) acc += wj[i] * d[i];
      hid[r * hidden + j] = std::max<T>(acc + b1[j], 0);
    }
  // sum_p (W2 h_p + b2) = W2 (sum_p h_p) + P b2: one product per sample.
  std::vector<T> hid_sum(static_cast<size_t>(n * hidden), T(0));
  for (i64 p = 0; p < pools; ++p)
    for (i64 b = 0; b < n; ++b)
      for (i64 j = 0; j < hidden; ++j) hid_sum[b * hidden + j] += hid[(p * n + b) * hidden + j];
#pragma omp parallel for num_threads(team(c * n * hidden, threads)) schedule(static)
  for (i64 i = 0; i < c; ++i)
    for (i64 b = 0; b < n; ++b) {
      const T* h = hid_sum.data() + b * hidden;
      const T* wi = w2 + i * hidden;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (i64 j = 0; j < hidden; ++j) acc += wi[j] * h[j];
      mc[b * c + i] = sigmoid<T>(acc + static_cast<T>(pools) * b2[i]);
    }
}

// pre = conv_k([smax, smean]) (+ bias); Ms = sigmoid(BN(pre)) or sigmoid(pre) without norm.
template <typename T>
void spatial_gate_forward(i64 n, i64 h, i64 w, const T* smax, const T* smean, i64 k,
                          const T* weight, const T* bias, int norm_mode, const T* bn_weight,
                          const T* bn_bias, T* running_mean, T* running_var, double eps,
                          double momentum, T* pre, double* bn_stats, T* ms, int threads) {
  const i64 r = k / 2, hw = h * w;
#pragma omp parallel num_threads(team(n * h * w * 2 * k * k, threads))
  {
    std::vector<T> acc(static_cast<size_t>(w));  // at most 2 k^2 terms: T accumulation
#pragma omp for schedule(static)
    for (i64 row = 0; row < n * h; ++row) {
      const i64 b = row / h, y = row % h;
      std::fill(acc.begin(), acc.end(), bias != nullptr ? bias[0] : T(0));
      for (i64 ci = 0; ci < 2; ++ci) {
        const T* in = (ci == 0 ? smax : smean) + b * hw;
        for (i64 ky = 0; ky < k; ++ky) {
          const i64 yy = y + ky - r;
          if (yy < 0 || yy >= h) continue;
          for (i64 kx = 0; kx < k; ++kx) {
            const T wt = weight[(ci * k + ky) * k + kx];
            const i64 x0 = std::max<i64>(0, r - kx), x1 = std::min<i64>(w, w + r - kx);
            const T* src = in + yy * w + kx - r;
#pragma omp simd
            for (i64 x = x0; x < x1; ++x) acc[x] += wt * src[x];
          }
        }
      }
      std::copy(acc.begin(), acc.end(), pre + row * w);
    }
  }
  const i64 total = n * hw;
  double mu = 0, is = 1, g = 1, beta = 0;
  if (norm_mode != 0) {
    if (norm_mode == 1) {
      double s = 0, ss = 0;
      for (i64 i = 0; i < total; ++i) {
        s += pre[i];
        ss += static_cast<double>(pre[i]) * pre[i];
      }
      mu = s / total;
      const double var = std::max(ss / total - mu * mu, 0.0);
      is = 1.0 / std::sqrt(var + eps);
      running_mean[0] = static_cast<T>(momentum * mu + (1 - momentum) * running_mean[0]);
      running_var[0] = static_cast<T>(momentum * var * total / (total - 1) +
                                      (1 - momentum) * running_var[0]);
    } else {
      mu = running_mean[0];
      is = 1.0 / std::sqrt(static_cast<double>(running_var[0]) + eps);
    }
    g = bn_weight[0];
    beta = bn_bias[0];
  }
  bn_stats[0] = mu;
  bn_stats[1] = is;
#pragma omp parallel for num_threads(team(total * 16, threads)) schedule(static)
  for (i64 i = 0; i < total; ++i) {
    const T normed = norm_mode != 0 ? static_cast<T>((pre[i] - mu) * is * g + beta) : pre[i];
    ms[i] = sigmoid<T>(normed);
  }
}

// Gradients of the spatial gate: from dL/dMs to dL/dsmax, dL/dsmean / C (grad_mean) and the
// conv / norm parameters (grad_bias, grad_bn_* nullable).
template <typename T>
void spatial_gate_backward(i64 n, i64 h, i64 w, i64 c, const T* grad_ms, const T* ms,
                           const T* pre, const T* smax, const T* smean, i64 k, const T* weight,
                           int norm_mode, const T* bn_weight, const double* bn_stats,
                           T* grad_smax, T* grad_mean, T* grad_weight, T* grad_bias,
                           T* grad_bn_weight, T* grad_bn_bias, int threads) {
  const i64 r = k / 2, hw = h * w, total = n * hw;
  std::vector<double> dpre(static_cast<size_t>(total));
  double sum_d = 0, sum_dx = 0;
  const double mu = bn_stats[0], is = bn_stats[1];
  for (i64 i = 0; i < total; ++i) {
    const double m = ms[i], d = grad_ms[i] * m * (1 - m);
    dpre[i] = d;
    sum_d += d;
    sum_dx += d * (pre[i] - mu) * is;
  }
  if (norm_mode != 0) {
    const double g = bn_weight[0] * is;
    const double k1 = norm_mode == 1 ? sum_d / total : 0, k2 = norm_mode == 1 ? sum_dx / total : 0;
    for (i64 i = 0; i < total; ++i) dpre[i] = g * (dpre[i] - k1 - (pre[i] - mu) * is * k2);
    if (grad_bn_weight != nullptr) grad_bn_weight[0] = static_cast<T>(sum_dx);
    if (grad_bn_bias != nullptr) grad_bn_bias[0] = static_cast<T>(sum_d);
  }
  if (grad_bias != nullptr) {
    double s = 0;
    for (i64 i = 0; i < total; ++i) s += dpre[i];
    grad_bias[0] = static_cast<T>(s);
  }
  const i64 taps = 2 * k * k;
  std::vector<double> partial(static_cast<size_t>(threads * taps), 0.0);
#pragma omp parallel num_threads(team(n * h * w * 4 * k * k, threads))
  {
    double* mine = partial.data() + omp_get_thread_num() * taps;
    std::vector<double> acc0(static_cast<size_t>(w)), acc1(static_cast<size_t>(w));
#pragma omp for schedule(static)
    for (i64 row = 0; row < n * h; ++row) {
      const i64 b = row / h, y = row % h;
      const double* d = dpre.data() + row * w;
      // dL/dweight: this output row against the input rows it read.
      for (i64 ci = 0; ci < 2; ++ci) {
        const T* in = (ci == 0 ? smax : smean) + b * hw;
        for (i64 ky = 0; ky < k; ++ky) {
          const i64 yy = y + ky - r;
          if (yy < 0 || yy >= h) continue;
          for (i64 kx = 0; kx < k; ++kx) {
            const i64 x0 = std::max<i64>(0, r - kx), x1 = std::min<i64>(w, w + r - kx);
            const T* src = in + yy * w + kx - r;
            double s = 0;
#pragma omp simd reduction(+ : s)
            for (i64 x = x0; x < x1; ++x) s += d[x] * src[x];
            mine[(ci * k + ky) * k + kx] += s;
          }
        }
      }
      // dL/dinput for this input row: the output rows that read it.
      std::fill(acc0.begin(), acc0.end(), 0.0);
      std::fill(acc1.begin(), acc1.end(), 0.0);
      for (i64 ky = 0; ky < k; ++ky) {
        const i64 yo = y - ky + r;
        if (yo < 0 || yo >= h) continue;
        const double* dout = dpre.data() + (b * h + yo) * w;
        for (i64 kx = 0; kx < k; ++kx) {
          const double w0 = weight[ky * k + kx], w1 = weight[(k + ky) * k + kx];
          // input x reads output x - kx + r
          const i64 x0 = std::max<i64>(0, kx - r), x1 = std::min<i64>(w, w + kx - r);
          const double* src = dout - kx + r;
#pragma omp simd
          for (i64 x = x0; x < x1; ++x) {
            acc0[x] += w0 * src[x];
            acc1[x] += w1 * src[x];
          }
        }
      }
      for (i64 x = 0; x < w; ++x) {
        grad_smax[row * w + x] = static_cast<T>(acc0[x]);
        grad_mean[row * w + x] = static_cast<T>(acc1[x] / c);
      }
    }
  }
  for (i64 t = 0; t < taps; ++t) {
    double s = 0;
    for (int th = 0; th < threads; ++th) s += partial[th * taps + t];
    grad_weight[t] = static_cast<T>(s);
  }
}

// Everything between the spatial gate's backward and the input gradient: dL/dMc from the plane
// sums and the channel-max routes, the MLP's backward, the norm's parameter gradients, and the
// coefficients of the input gradient (see native_cbam.py).
template <typename T>
void channel_gate_backward(
    i64 n, i64 c, i64 hw, const T* x, const double* gms_sum, const double* gms_x_sum,
    const double* mean_x_sum, const double* sums, const T* grad_mean, const T* grad_smax,
    const i64* channel_of_max, const i64* pixel_of_max, const T* scale, const T* shift,
    const T* mc, const T* desc, const T* hid, i64 hidden, const T* w1, const T* w2, int use_avg,
    int use_max, int norm_mode, const T* bn_weight, const double* mean, const double* invstd,
    T* grad_w1, T* grad_b1, T* grad_w2, T* grad_b2, T* grad_bn_weight, T* grad_bn_bias,
    T* coef_g, T* coef_0, T* coef_x, T* route_pixel_value, T* route_plane_value, int threads) {
  const i64 nc = n * c, pools = use_avg + use_max, rows = pools * n;
  std::vector<double> dy_sum(nc), dy_x_sum(nc), dlogit(nc);
  for (i64 q = 0; q < nc; ++q) {
    dy_sum[q] = gms_sum[q];
    dy_x_sum[q] = gms_x_sum[q] + mean_x_sum[q];
  }
  for (i64 b = 0; b < n; ++b) {
    double total = 0;
    for (i64 p = 0; p < hw; ++p) {
      const i64 ch = channel_of_max[b * hw + p];
      const double g = grad_smax[b * hw + p];
      total += grad_mean[b * hw + p];
      dy_sum[b * c + ch] += g;
      dy_x_sum[b * c + ch] += g * x[(b * c + ch) * hw + p];
    }
    for (i64 ch = 0; ch < c; ++ch) dy_sum[b * c + ch] += total;
  }
  for (i64 q = 0; q < nc; ++q) {
    const i64 ch = q % c;
    const double m = mc[q];
    dlogit[q] = (dy_x_sum[q] * scale[ch] + dy_sum[q] * shift[ch]) * m * (1 - m);
  }
  // MLP backward, in T as the eager Linear layers.  The output layer's gradient is dlogit for
  // every pool, so its weight gradient is dlogit^T (sum over pools of the hidden activations).
  std::vector<T> dl(nc), hid_sum(n * hidden, T(0)), dhid(rows * hidden), ddesc(rows * c, T(0));
  for (i64 q = 0; q < nc; ++q) dl[q] = static_cast<T>(dlogit[q]);
  for (i64 p = 0; p < pools; ++p)
    for (i64 b = 0; b < n; ++b)
      for (i64 j = 0; j < hidden; ++j) hid_sum[b * hidden + j] += hid[(p * n + b) * hidden + j];
  const int team_size = team(2 * c * n * hidden, threads);
  const i64 chunk = (c + team_size - 1) / team_size;
  std::vector<T> dh_part(team_size * n * hidden, T(0));
#pragma omp parallel for num_threads(team_size) schedule(static)
  for (i64 t = 0; t < team_size; ++t) {
    const i64 i0 = t * chunk, i1 = std::min(c, i0 + chunk);
    T* dh = dh_part.data() + t * n * hidden;  // this chunk's part of W2^T dlogit
    for (i64 i = i0; i < i1; ++i) {
      const T* wi = w2 + i * hidden;
      T* gw = grad_w2 + i * hidden;
      T gb = 0;
      for (i64 j = 0; j < hidden; ++j) gw[j] = 0;
      for (i64 b = 0; b < n; ++b) {
        const T d = dl[b * c + i];
        const T* hs = hid_sum.data() + b * hidden;
        T* dhb = dh + b * hidden;
        gb += d;
#pragma omp simd
        for (i64 j = 0; j < hidden; ++j) {
          gw[j] += d * hs[j];
          dhb[j] += d * wi[j];
        }
      }
      grad_b2[i] = gb * static_cast<T>(pools);
    }
  }
  // dL/dhidden = W2^T dlogit (the same for every pool), masked by the ReLU.
  for (i64 rr = 0; rr < rows; ++rr)
    for (i64 j = 0; j < hidden; ++j) {
      T sum = 0;
      for (i64 t = 0; t < team_size; ++t) sum += dh_part[(t * n + rr % n) * hidden + j];
      dhid[rr * hidden + j] = hid[rr * hidden + j] > 0 ? sum : T(0);
    }
#pragma omp parallel for num_threads(team_size) schedule(static)
  for (i64 t = 0; t < team_size; ++t) {
    const i64 i0 = t * chunk, i1 = std::min(c, i0 + chunk);
    for (i64 j = 0; j < hidden; ++j) {
      const T* wj = w1 + j * c;
      T* gw = grad_w1 + j * c;
      T gb = 0;
      for (i64 i = i0; i < i1; ++i) gw[i] = 0;
      for (i64 rr = 0; rr < rows; ++rr) {
        const T d = dhid[rr * hidden + j];
        const T* dr = desc + rr * c;
        T* out = ddesc.data() + rr * c;
        gb += d;
#pragma omp simd
        for (i64 i = i0; i < i1; ++i) {
          out[i] += d * wj[i];
          gw[i] += d * dr[i];
        }
      }
      if (t == 0) grad_b1[j] = gb;
    }
  }
  // dz = Mc * dy + dL/davg / HW (+ dL/dmax at the spatial maximum); BN's backward.
  std::vector<double> dz_sum(nc), dz_x_sum(nc), grad_avg(nc, 0.0), grad_max(nc, 0.0);
  for (i64 q = 0; q < nc; ++q) {
    if (use_avg) grad_avg[q] = ddesc[q];
    if (use_max) grad_max[q] = ddesc[(use_avg ? nc : 0) + q];
    const double m = mc[q];
    dz_sum[q] = m * dy_sum[q] + grad_avg[q] + grad_max[q];
    dz_x_sum[q] = m * dy_x_sum[q] + grad_avg[q] * sums[q] / hw;
    if (use_max) dz_x_sum[q] += grad_max[q] * x[q * hw + pixel_of_max[q]];
  }
  const double count = static_cast<double>(n * hw);
  for (i64 ch = 0; ch < c; ++ch) {
    double gain = 1, k0 = 0, kx = 0;
    if (norm_mode != 0) {
      double gb = 0, gx = 0;
      for (i64 b = 0; b < n; ++b) {
        gb += dz_sum[b * c + ch];
        gx += dz_x_sum[b * c + ch];
      }
      const double gw = invstd[ch] * (gx - mean[ch] * gb);  // sum dz * x_hat
      if (grad_bn_weight != nullptr) grad_bn_weight[ch] = static_cast<T>(gw);
      if (grad_bn_bias != nullptr) grad_bn_bias[ch] = static_cast<T>(gb);
      gain = bn_weight[ch] * invstd[ch];
      if (norm_mode == 1) {  // the batch mean and variance depend on x
        k0 = -gb / count + invstd[ch] * mean[ch] * gw / count;
        kx = -invstd[ch] * gw / count;
      }
    }
    coef_x[ch] = static_cast<T>(gain * kx);
    for (i64 b = 0; b < n; ++b) {
      const i64 q = b * c + ch;
      coef_g[q] = static_cast<T>(gain * mc[q]);
      coef_0[q] = static_cast<T>(gain * (grad_avg[q] / hw + k0));
      if (use_max) route_plane_value[q] = static_cast<T>(gain * grad_max[q]);
    }
  }
  for (i64 b = 0; b < n; ++b)
    for (i64 p = 0; p < hw; ++p) {
      const i64 q = b * c + channel_of_max[b * hw + p];
      route_pixel_value[b * hw + p] = static_cast<T>(static_cast<double>(coef_g[q]) *
                                                     grad_smax[b * hw + p]);
    }
}

// ---- One call per direction.  The structs mirror the ctypes structures in native_cbam.py.

struct Gates {  // sizes; parameters and buffers of the norm before CBAM and of CBAM's gates
  i64 n, c, h, w;
  int norm_mode;
  const void *bn_weight, *bn_bias;
  void *bn_running_mean, *bn_running_var;
  double bn_eps, bn_momentum;
  i64 hidden;
  const void *w1, *b1, *w2, *b2;
  int use_avg, use_max;
  i64 k;
  const void *conv_weight, *conv_bias;
  int spatial_norm_mode;
  const void *sn_weight, *sn_bias;
  void *sn_running_mean, *sn_running_var;
  double sn_eps, sn_momentum;
  int threads;
};

struct Saved {  // what forward keeps for backward; all null in inference
  double *sums, *mean, *invstd, *spatial_stats;
  void *scale, *shift, *desc, *hid, *mc, *smax, *smean, *pre, *ms;
  i64 *pixel_of_max, *channel_of_max;
};

struct Grads {  // outputs of backward, each nullable
  void *input, *bn_weight, *bn_bias, *w1, *b1, *w2, *b2, *conv_weight, *conv_bias, *sn_weight,
      *sn_bias;
};

template <typename T>
const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T* io(void* p) {
  return static_cast<T*>(p);
}

// A caller's buffer, or scratch memory when the caller passes none (inference).
template <typename U>
struct Buffer {
  std::vector<U> own;
  U* ptr;
  Buffer(void* given, i64 size) : ptr(static_cast<U*>(given)) {
    if (ptr == nullptr) {
      own.resize(static_cast<size_t>(size));
      ptr = own.data();
    }
  }
};

template <typename T>
void forward(const T* x, const T* shortcut, T* out, const Gates& g, const Saved& s) {
  const i64 n = g.n, c = g.c, hw = g.h * g.w, pools = g.use_avg + g.use_max;
  const bool training = s.sums != nullptr;
  Buffer<double> sums(s.sums, n * c), mean(s.mean, c), invstd(s.invstd, c),
      spatial_stats(s.spatial_stats, 2);
  Buffer<T> scale(s.scale, c), shift(s.shift, c), desc(s.desc, pools * n * c),
      hid(s.hid, pools * n * g.hidden), mc(s.mc, n * c), smax(s.smax, n * hw),
      smean(s.smean, n * hw), pre(s.pre, n * hw), ms(s.ms, n * hw), maxima(nullptr, n * c),
      minima(nullptr, n * c);
  std::vector<double> sumsq(static_cast<size_t>(n * c));
  std::vector<i64> argmax(training ? n * c : 0), argmin(training ? n * c : 0);
  plane_stats<T>(x, n * c, c, hw, in<T>(g.bn_weight), sums.ptr, sumsq.data(), maxima.ptr,
                 minima.ptr,
                 training ? argmax.data() : nullptr, training ? argmin.data() : nullptr,
                 g.threads);
  channel_gate_forward<T>(n, c, hw, sums.ptr, sumsq.data(), maxima.ptr, minima.ptr,
                          argmax.data(), argmin.data(), g.norm_mode, in<T>(g.bn_weight),
                          in<T>(g.bn_bias), io<T>(g.bn_running_mean), io<T>(g.bn_running_var),
                          g.bn_eps, g.bn_momentum, g.hidden, in<T>(g.w1), in<T>(g.b1),
                          in<T>(g.w2), in<T>(g.b2), g.use_avg, g.use_max, scale.ptr, shift.ptr,
                          mean.ptr, invstd.ptr, desc.ptr, hid.ptr, mc.ptr,
                          training ? s.pixel_of_max : nullptr, g.threads);
  channel_pool<T>(x, n, c, hw, scale.ptr, shift.ptr, mc.ptr, smax.ptr, smean.ptr,
                  training ? s.channel_of_max : nullptr, g.threads);
  spatial_gate_forward<T>(n, g.h, g.w, smax.ptr, smean.ptr, g.k, in<T>(g.conv_weight),
                          in<T>(g.conv_bias), g.spatial_norm_mode, in<T>(g.sn_weight),
                          in<T>(g.sn_bias), io<T>(g.sn_running_mean), io<T>(g.sn_running_var),
                          g.sn_eps, g.sn_momentum, pre.ptr, spatial_stats.ptr, ms.ptr,
                          g.threads);
  apply_gates<T>(x, n, c, hw, scale.ptr, shift.ptr, mc.ptr, ms.ptr, shortcut, out, g.threads);
}

template <typename T>
void backward(const T* grad, const T* x, const Gates& g, const Saved& s, const Grads& out) {
  const i64 n = g.n, c = g.c, hw = g.h * g.w;
  const T *scale = in<T>(s.scale), *shift = in<T>(s.shift), *mc = in<T>(s.mc),
          *ms = in<T>(s.ms);
  std::vector<T> grad_ms(n * hw), grad_smax(n * hw), grad_mean(n * hw), coef_g(n * c),
      coef_0(n * c), coef_x(c), route_pixel_value(n * hw), route_plane_value(n * c);
  std::vector<double> gms_sum(n * c), gms_x_sum(n * c), mean_x_sum(n * c);
  grad_pass1<T>(grad, x, n, c, hw, scale, shift, mc, ms, grad_ms.data(), gms_sum.data(),
                gms_x_sum.data(), g.threads);
  spatial_gate_backward<T>(n, g.h, g.w, c, grad_ms.data(), ms, in<T>(s.pre), in<T>(s.smax),
                           in<T>(s.smean), g.k, in<T>(g.conv_weight), g.spatial_norm_mode,
                           in<T>(g.sn_weight), s.spatial_stats, grad_smax.data(),
                           grad_mean.data(), io<T>(out.conv_weight), io<T>(out.conv_bias),
                           io<T>(out.sn_weight), io<T>(out.sn_bias), g.threads);
  weighted_plane_sums<T>(x, grad_mean.data(), n, c, hw, mean_x_sum.data(), g.threads);
  channel_gate_backward<T>(n, c, hw, x, gms_sum.data(), gms_x_sum.data(), mean_x_sum.data(),
                           s.sums, grad_mean.data(), grad_smax.data(), s.channel_of_max,
                           s.pixel_of_max, scale, shift, mc, in<T>(s.desc), in<T>(s.hid),
                           g.hidden, in<T>(g.w1), in<T>(g.w2), g.use_avg, g.use_max,
                           g.norm_mode, in<T>(g.bn_weight), s.mean, s.invstd, io<T>(out.w1),
                           io<T>(out.b1), io<T>(out.w2), io<T>(out.b2), io<T>(out.bn_weight),
                           io<T>(out.bn_bias), coef_g.data(), coef_0.data(), coef_x.data(),
                           route_pixel_value.data(), route_plane_value.data(), g.threads);
  if (out.input != nullptr)
    grad_input<T>(grad, x, n, c, hw, ms, grad_mean.data(), coef_g.data(), coef_0.data(),
                  coef_x.data(), s.channel_of_max, route_pixel_value.data(),
                  g.use_max ? s.pixel_of_max : nullptr, route_plane_value.data(),
                  io<T>(out.input), g.threads);
}

}  // namespace

extern "C" {
void cbam_forward_f32(const float* x, const float* shortcut, float* out, const Gates* g,
                      const Saved* s) {
  forward<float>(x, shortcut, out, *g, *s);
}
void cbam_forward_f64(const double* x, const double* shortcut, double* out, const Gates* g,
                      const Saved* s) {
  forward<double>(x, shortcut, out, *g, *s);
}
void cbam_backward_f32(const float* grad, const float* x, const Gates* g, const Saved* s,
                       const Grads* out) {
  backward<float>(grad, x, *g, *s, *out);
}
void cbam_backward_f64(const double* grad, const double* x, const Gates* g, const Saved* s,
                       const Grads* out) {
  backward<double>(grad, x, *g, *s, *out);
}
}
