// The fused CBAM on CPU: forward and backward of (BatchNorm +) CBAM in one call each.  The
// design (what is read, recomputed and saved) is in cpp_impl.py's docstring.
//
// Tensors are contiguous NCHW, T is float or double.  Every pass reads the block's input x and
// recomputes F = (x - center[c]) * scale[c] + shift[c] (the normalised map; center is the norm's
// mean rounded to T, so no digits cancel at a large mean offset) and F' = F * Mc on the fly.  Names
// follow the paper: Mc the channel attention of F (Eq. 2), Ms the spatial attention of F' (Eq. 3),
// F'' = Ms * F' the output (Eq. 1).
//
// Floating-point sums: full-map sums are taken in T over blocks of at most kBlock terms, the
// blocks added in double.  Statistics of a map with a large mean offset are taken around its
// mean (two passes over each plane while it is in cache, Chan et al.'s merge across planes) and
// every sum weighted by x is taken around the norm's mean, as PyTorch's BatchNorm does, so no
// result depends on the offset more than PyTorch's own BatchNorm does.
// Threads: OpenMP with the caller's (torch's) thread count, sharing torch's libgomp.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
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
// ---- The arguments.  The structs mirror the ctypes structures of cpp_impl.py (checked by
// cbam_struct_layout).

struct Gates {  // sizes; parameters and buffers of the norm before CBAM and of CBAM's gates
  i64 n, c, h, w;
  int bn_mode;  // norm modes: 0 none, 1 training (batch statistics), 2 evaluation
  const void *bn_weight, *bn_bias;
  void *bn_running_mean, *bn_running_var;
  double bn_eps, bn_momentum;
  i64 hidden;
  const void *w1, *b1, *w2, *b2;
  int use_avg, use_max;
  i64 k;
  const void *conv_weight, *conv_bias;
  int sn_mode;
  const void *sn_weight, *sn_bias;
  void *sn_running_mean, *sn_running_var;
  double sn_eps, sn_momentum;
  int threads;
};

struct Saved {  // what forward keeps for backward; all null in inference
  double *plane_mean, *mean, *invstd, *spatial_stats;
  void *center, *scale, *shift, *desc, *hid, *mc, *smax, *smean, *pre, *ms;
  i64 *pixel_of_max, *channel_of_max;
};

struct Grads {  // outputs of backward, each nullable
  void *input, *bn_weight, *bn_bias, *w1, *b1, *w2, *b2, *conv_weight, *conv_bias, *sn_weight,
      *sn_bias;
};

template <typename T>
struct Norm {  // a BatchNorm's parameters and statistics
  int mode;
  const T *weight, *bias;
  T *running_mean, *running_var;
  double eps, momentum;
};

template <typename T>
struct Block {  // ``Gates`` with typed pointers
  i64 n, c, h, w, hw, hidden, k;
  int use_avg, use_max, pools, threads;
  Norm<T> bn, sn;
  const T *w1, *b1, *w2, *b2, *conv_weight, *conv_bias;

  explicit Block(const Gates& g)
      : n(g.n), c(g.c), h(g.h), w(g.w), hw(g.h * g.w), hidden(g.hidden), k(g.k),
        use_avg(g.use_avg), use_max(g.use_max), pools(g.use_avg + g.use_max),
        threads(g.threads),
        bn{g.bn_mode, in(g.bn_weight), in(g.bn_bias), io(g.bn_running_mean),
           io(g.bn_running_var), g.bn_eps, g.bn_momentum},
        sn{g.sn_mode, in(g.sn_weight), in(g.sn_bias), io(g.sn_running_mean),
           io(g.sn_running_var), g.sn_eps, g.sn_momentum},
        w1(in(g.w1)), b1(in(g.b1)), w2(in(g.w2)), b2(in(g.b2)), conv_weight(in(g.conv_weight)),
        conv_bias(in(g.conv_bias)) {}

  static const T* in(const void* p) { return static_cast<const T*>(p); }
  static T* io(void* p) { return static_cast<T*>(p); }
};

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

// ``Saved`` with typed pointers, the caller's buffers or scratch memory.  mean and invstd are
// the statistics the norm before CBAM normalised with (0 and 1 without it), plane_mean the
// spatial mean of x per plane, spatial_stats the spatial norm's mean and inverse std.
template <typename T>
struct State {
  Buffer<double> plane_mean, mean, invstd, spatial_stats;
  Buffer<T> center, scale, shift, desc, hid, mc, smax, smean, pre, ms;
  i64 *pixel_of_max, *channel_of_max;  // null in inference

  State(const Saved& s, const Block<T>& b)
      : plane_mean(s.plane_mean, b.n * b.c), mean(s.mean, b.c), invstd(s.invstd, b.c),
        spatial_stats(s.spatial_stats, 2), center(s.center, b.c), scale(s.scale, b.c),
        shift(s.shift, b.c),
        desc(s.desc, b.pools * b.n * b.c), hid(s.hid, b.pools * b.n * b.hidden),
        mc(s.mc, b.n * b.c), smax(s.smax, b.n * b.hw), smean(s.smean, b.n * b.hw),
        pre(s.pre, b.n * b.hw), ms(s.ms, b.n * b.hw), pixel_of_max(s.pixel_of_max),
        channel_of_max(s.channel_of_max) {}
};

template <typename T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// ---- Forward passes over the map.

// Pass 1, per plane (n, c) of x: the mean and the sum of squared deviations from it (a second
// pass over the plane, in cache, around the first pass's rounded mean, corrected by the
// deviations' sum), max, min and, when wanted, the first index of the one that is F's maximum:
// the max where the norm's weight (``sign``, null: none) is positive, the min where it is
// negative, neither where it is 0 (F constant: index 0).
template <typename T>
void plane_statistics(const T* x, i64 planes, i64 c, i64 hw, const T* sign, double* mean_out,
                      double* m2_out, T* max_out, T* min_out, i64* argmax, i64* argmin,
                      int threads) {
#pragma omp parallel for num_threads(team(planes * hw, threads)) schedule(static)
  for (i64 q = 0; q < planes; ++q) {
    const T* p = x + q * hw;
    double s = 0;
    T hi = p[0], lo = p[0];
    for (i64 i0 = 0; i0 < hw; i0 += kBlock) {
      const i64 i1 = std::min(hw, i0 + kBlock);
      T bs = 0;
#pragma omp simd reduction(+ : bs) reduction(max : hi) reduction(min : lo)
      for (i64 i = i0; i < i1; ++i) {
        const T v = p[i];
        bs += v;
        hi = v > hi ? v : hi;
        lo = v < lo ? v : lo;
      }
      s += bs;
    }
    const T rough = static_cast<T>(s / hw);
    double d = 0, dd = 0;
    for (i64 i0 = 0; i0 < hw; i0 += kBlock) {
      const i64 i1 = std::min(hw, i0 + kBlock);
      T bd = 0, bdd = 0;
#pragma omp simd reduction(+ : bd, bdd)
      for (i64 i = i0; i < i1; ++i) {
        const T v = p[i] - rough;
        bd += v;
        bdd += v * v;
      }
      d += bd;
      dd += bdd;
    }
    mean_out[q] = rough + d / hw;
    m2_out[q] = std::max(dd - d * d / hw, 0.0);
    max_out[q] = hi;
    min_out[q] = lo;
    if (argmax != nullptr) {  // the plane is still in cache
      const T weight = sign != nullptr ? sign[q % c] : T(1);
      argmax[q] = weight > 0 ? first_index(p, hw, hi) : 0;
      argmin[q] = weight < 0 ? first_index(p, hw, lo) : 0;
    }
  }
}

// Pass 2, per pixel (n, p) of F' = ((x - center) * scale + shift) * Mc: max over channels, its
// first channel (with kIndex) and the mean over channels.  Two channels per step halve the
// accumulators' traffic.
template <typename T, bool kIndex>
void channel_pool_impl(const T* x, i64 n, i64 c, i64 hw, const T* center, const T* scale,
                       const T* shift, const T* mc, T* max_out, T* mean_out, i64* argmax,
                       int threads) {
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
      const T s = scale[c0], t = shift[c0], m = mcb[c0], cen = center[c0];
      const T* row = xb + c0 * hw;
#pragma omp simd
      for (i64 i = 0; i < len; ++i) {
        const T y = ((row[i] - cen) * s + t) * m;
        hi[i] = y;
        acc[i] = y;
        if (kIndex) at[i] = static_cast<int32_t>(c0);
      }
    }
    i64 ch = c0 + 1;
    for (; ch + 1 < c1; ch += 2) {
      const T* row0 = xb + ch * hw;
      const T* row1 = row0 + hw;
      const T s0 = scale[ch], t0 = shift[ch], m0 = mcb[ch], cen0 = center[ch];
      const T s1 = scale[ch + 1], t1 = shift[ch + 1], m1 = mcb[ch + 1], cen1 = center[ch + 1];
      const int32_t i0 = static_cast<int32_t>(ch), i1 = i0 + 1;
#pragma omp simd
      for (i64 i = 0; i < len; ++i) {
        const T y0 = ((row0[i] - cen0) * s0 + t0) * m0, y1 = ((row1[i] - cen1) * s1 + t1) * m1;
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
      const T s = scale[ch], t = shift[ch], m = mcb[ch], cen = center[ch];
#pragma omp simd
      for (i64 i = 0; i < len; ++i) {
        const T y = ((row[i] - cen) * s + t) * m;
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
void channel_pool(const T* x, i64 n, i64 c, i64 hw, const T* center, const T* scale,
                  const T* shift, const T* mc, T* max_out, T* mean_out, i64* argmax,
                  int threads) {
  if (argmax != nullptr)
    channel_pool_impl<T, true>(x, n, c, hw, center, scale, shift, mc, max_out, mean_out, argmax,
                               threads);
  else
    channel_pool_impl<T, false>(x, n, c, hw, center, scale, shift, mc, max_out, mean_out,
                                argmax, threads);
}

// Pass 3, out = F'' = ((x - center) * scale + shift) * Mc * Ms.
// With a shortcut (inference), the end of the residual block instead: relu(out + shortcut).
template <typename T>
void apply_gates(const T* x, i64 n, i64 c, i64 hw, const T* center, const T* scale,
                 const T* shift, const T* mc,
                 const T* ms, const T* shortcut, T* out, int threads) {
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 q = 0; q < n * c; ++q) {
    const i64 b = q / c, ch = q % c;
    const T s = scale[ch], t = shift[ch], m = mc[q], cen = center[ch];
    const T* xp = x + q * hw;
    const T* msb = ms + b * hw;
    T* op = out + q * hw;
    if (shortcut == nullptr) {
#pragma omp simd
      for (i64 i = 0; i < hw; ++i) op[i] = (((xp[i] - cen) * s + t) * m) * msb[i];
    } else {
      const T* sp = shortcut + q * hw;
#pragma omp simd
      for (i64 i = 0; i < hw; ++i) {
        const T sum = (((xp[i] - cen) * s + t) * m) * msb[i] + sp[i];
        op[i] = sum < T(0) ? T(0) : sum;  // NaN passes, as torch.relu
      }
    }
  }
}

// Backward, first pass over (g, x): dL/dMs per pixel, sum_c g * y, and per plane
// ---- Backward passes over the map.  ``center`` is the norm's mean per channel in T (0 without
// a norm): sums weighted by x are taken of x - center.

// Pass 4, over (g, x): dL/dMs per pixel (sum_c g * F'), and per plane sum_p g * Ms and
// sum_p g * Ms * (x - center).
template <typename T>
void grad_ms_and_plane_sums(const T* g, const T* x, i64 n, i64 c, i64 hw, const T* scale,
                            const T* shift, const T* center, const T* mc, const T* ms,
                            T* grad_ms, double* gms_sum, double* gms_x_sum, int threads) {
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
      const T s = scale[ch], t = shift[ch], m = mc[b * c + ch], cen = center[ch];
      T gms = 0, gmsx = 0;  // at most kTile terms
#pragma omp simd reduction(+ : gms, gmsx)
      for (i64 i = 0; i < len; ++i) {
        const T y = ((xp[i] - cen) * s + t) * m;
        acc[i] += gp[i] * y;
        const T gm = gp[i] * msb[i];
        gms += gm;
        gmsx += gm * (xp[i] - cen);
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

// Pass 5, over x: per plane sum_p w[n, p] * (x[n, c, p] - center[c]).
template <typename T>
void weighted_plane_sums(const T* x, const T* w, const T* center, i64 n, i64 c, i64 hw,
                         double* out, int threads) {
#pragma omp parallel for num_threads(team(n * c * hw, threads)) schedule(static)
  for (i64 q = 0; q < n * c; ++q) {
    const T* xp = x + q * hw;
    const T* wb = w + (q / c) * hw;
    const T cen = center[q % c];
    double s = 0;
    for (i64 i0 = 0; i0 < hw; i0 += kBlock) {
      const i64 i1 = std::min(hw, i0 + kBlock);
      T bs = 0;
#pragma omp simd reduction(+ : bs)
      for (i64 i = i0; i < i1; ++i) bs += wb[i] * (xp[i] - cen);
      s += bs;
    }
    out[q] = s;
  }
}

// The input gradient's terms (``input_gradient``):
//   dx = coef_g[n, c] * (g * Ms[n, p] + grad_mean[n, p]) + coef_0[n, c] + coef_x[c] * (x - center)
// plus the max-pooling routes: route_pixel_value[n, p] at the channel channel_of_max[n, p] and
// route_plane_value[n, c] at the pixel pixel_of_max[n, c] (with the 'max' pooling only).
template <typename T>
struct InputGradTerms {
  std::vector<T> coef_g, coef_0, coef_x, route_pixel_value, route_plane_value;
  InputGradTerms(i64 n, i64 c, i64 hw)
      : coef_g(n * c), coef_0(n * c), coef_x(c), route_pixel_value(n * hw),
        route_plane_value(n * c) {}
};

// Pass 6, over (g, x): the input gradient.
template <typename T>
void input_gradient(const T* g, const T* x, const Block<T>& blk, const T* ms, const T* grad_mean,
                    const T* center, const InputGradTerms<T>& terms, const i64* channel_of_max,
                    const i64* pixel_of_max, T* dx) {
  const i64 n = blk.n, c = blk.c, hw = blk.hw;
#pragma omp parallel for num_threads(team(n * c * hw, blk.threads)) schedule(static)
  for (i64 q = 0; q < n * c; ++q) {
    const i64 b = q / c, ch = q % c;
    const T a = terms.coef_g[q], k = terms.coef_0[q], r = terms.coef_x[ch], cen = center[ch];
    const T* gp = g + q * hw;
    const T* xp = x + q * hw;
    const T* msb = ms + b * hw;
    const T* gmb = grad_mean + b * hw;
    T* out = dx + q * hw;
#pragma omp simd
    for (i64 i = 0; i < hw; ++i) out[i] = a * (gp[i] * msb[i] + gmb[i]) + k + r * (xp[i] - cen);
  }
  for (i64 b = 0; b < n; ++b)
    for (i64 i = 0; i < hw; ++i)
      dx[(b * c + channel_of_max[b * hw + i]) * hw + i] += terms.route_pixel_value[b * hw + i];
  if (blk.use_max)
    for (i64 q = 0; q < n * c; ++q) dx[q * hw + pixel_of_max[q]] += terms.route_plane_value[q];
}

// ---- The gates' small sub-networks (default form: MLP Linear-ReLU-Linear; k x k conv,
// optionally BatchNorm(1), sigmoid).

// The norm before CBAM: its batch statistics from the planes' means and squared deviations
// (Chan et al.'s merge; running statistics updated) or its running statistics, then F's
// per-channel scale and shift.  Without a norm: mean 0, inverse std 1, F = x.
template <typename T>
void batch_norm_statistics(const Block<T>& blk, const double* plane_m2, State<T>& st) {
  const i64 n = blk.n, c = blk.c;
  const Norm<T>& bn = blk.bn;
  const double count = static_cast<double>(n * blk.hw);
  for (i64 ch = 0; ch < c; ++ch) {
    double mu = 0, is = 1, sc = 1, sh = 0;
    if (bn.mode != 0) {
      double var;
      if (bn.mode == 1) {
        for (i64 b = 0; b < n; ++b) mu += st.plane_mean.ptr[b * c + ch];
        mu /= n;
        double m2 = 0;
        for (i64 b = 0; b < n; ++b) {
          const double d = st.plane_mean.ptr[b * c + ch] - mu;
          m2 += plane_m2[b * c + ch] + blk.hw * d * d;
        }
        var = m2 / count;
        bn.running_mean[ch] =
            static_cast<T>(bn.momentum * mu + (1 - bn.momentum) * bn.running_mean[ch]);
        bn.running_var[ch] = static_cast<T>(bn.momentum * var * count / (count - 1) +
                                            (1 - bn.momentum) * bn.running_var[ch]);
      } else {
        mu = bn.running_mean[ch];
        var = bn.running_var[ch];
      }
      is = 1.0 / std::sqrt(var + bn.eps);
      sc = bn.weight[ch] * is;
    }
    const T center = static_cast<T>(mu);
    if (bn.mode != 0) sh = bn.bias[ch] + (center - mu) * sc;  // F at the center
    st.center.ptr[ch] = center;
    st.mean.ptr[ch] = mu;
    st.invstd.ptr[ch] = is;
    st.scale.ptr[ch] = static_cast<T>(sc);
    st.shift.ptr[ch] = static_cast<T>(sh);
  }
}

// F's value at x, in double: (x - mean) * weight * invstd + bias (x without a norm).
template <typename T>
double normalised(const Block<T>& blk, const State<T>& st, i64 ch, double x) {
  if (blk.bn.mode == 0) return x;
  return (x - st.mean.ptr[ch]) * st.invstd.ptr[ch] * blk.bn.weight[ch] + blk.bn.bias[ch];
}

// The channel descriptors of F, desc (P, N, C): F^c_avg (if use_avg), then F^c_max (if use_max)
// with the pixel of the first maximum (training): F's maximum is x's where F's scale is
// positive, x's minimum where it is negative (F constant where it is 0: pixel 0).
template <typename T>
void channel_descriptors(const Block<T>& blk, const T* maxima, const T* minima,
                         const i64* argmax, const i64* argmin, State<T>& st) {
  const i64 nc = blk.n * blk.c;
  for (i64 q = 0; q < nc; ++q) {
    const i64 ch = q % blk.c;
    T* desc = st.desc.ptr + q;
    if (blk.use_avg) {
      *desc = static_cast<T>(normalised(blk, st, ch, st.plane_mean.ptr[q]));
      desc += nc;
    }
    if (blk.use_max) {
      const T sc = st.scale.ptr[ch];
      *desc = static_cast<T>(normalised(blk, st, ch, sc > 0 ? maxima[q] : minima[q]));
      if (st.pixel_of_max != nullptr)
        st.pixel_of_max[q] = sc > 0 ? argmax[q] : sc < 0 ? argmin[q] : 0;
    }
  }
}

// Mc = sigmoid(sum_p W2 relu(W1 d_p + b1) + b2) (Eq. 2); the hidden activations hid (P, N,
// hidden) are kept for backward.
template <typename T>
void channel_attention(const Block<T>& blk, State<T>& st) {
  const i64 n = blk.n, c = blk.c, hidden = blk.hidden, rows = blk.pools * n;
  const T *desc = st.desc.ptr, *w1 = blk.w1, *b1 = blk.b1, *w2 = blk.w2, *b2 = blk.b2;
  T* hid = st.hid.ptr;
#pragma omp parallel for num_threads(team(hidden * rows * c, blk.threads)) schedule(static)
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
  for (i64 p = 0; p < blk.pools; ++p)
    for (i64 b = 0; b < n; ++b)
      for (i64 j = 0; j < hidden; ++j) hid_sum[b * hidden + j] += hid[(p * n + b) * hidden + j];
#pragma omp parallel for num_threads(team(c * n * hidden, blk.threads)) schedule(static)
  for (i64 i = 0; i < c; ++i)
    for (i64 b = 0; b < n; ++b) {
      const T* h = hid_sum.data() + b * hidden;
      const T* wi = w2 + i * hidden;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (i64 j = 0; j < hidden; ++j) acc += wi[j] * h[j];
      st.mc.ptr[b * c + i] = sigmoid<T>(acc + static_cast<T>(blk.pools) * b2[i]);
    }
}

// Pre = conv_k([smax, smean]) reads, for output row y of sample b, one input row per tap: calls
// visit(tap, src, x0, x1) for each tap (index (channel * k + ky) * k + kx) whose input row is
// inside the map, src[x] being the tap's input for output x in [x0, x1) (zero padding outside).
template <typename T, typename Visit>
void for_each_tap(const T* smax, const T* smean, i64 b, i64 y, i64 h, i64 w, i64 k, Visit visit) {
  const i64 r = k / 2;
  for (i64 ci = 0; ci < 2; ++ci) {
    const T* in = (ci == 0 ? smax : smean) + b * h * w;
    for (i64 ky = 0; ky < k; ++ky) {
      const i64 yy = y + ky - r;
      if (yy < 0 || yy >= h) continue;
      for (i64 kx = 0; kx < k; ++kx)
        visit((ci * k + ky) * k + kx, in + yy * w + kx - r, std::max<i64>(0, r - kx),
              std::min<i64>(w, w + r - kx));
    }
  }
}

// Ms = sigmoid(BN(f^{k x k}([F'^s_max; F'^s_avg]))) (Eq. 3, BN as the authors', or the conv's
// bias without it); pre (the conv's output) and the norm's statistics are kept for backward.
template <typename T>
void spatial_attention(const Block<T>& blk, State<T>& st) {
  const i64 n = blk.n, h = blk.h, w = blk.w, k = blk.k;
  const T *smax = st.smax.ptr, *smean = st.smean.ptr, *weight = blk.conv_weight,
          *bias = blk.conv_bias;
  T* pre = st.pre.ptr;
  const int threads = blk.threads;
  const i64 hw = h * w;
#pragma omp parallel num_threads(team(n * h * w * 2 * k * k, threads))
  {
    std::vector<T> acc(static_cast<size_t>(w));  // at most 2 k^2 terms: T accumulation
#pragma omp for schedule(static)
    for (i64 row = 0; row < n * h; ++row) {
      const i64 b = row / h, y = row % h;
      std::fill(acc.begin(), acc.end(), bias != nullptr ? bias[0] : T(0));
      for_each_tap(smax, smean, b, y, h, w, k, [&](i64 tap, const T* src, i64 x0, i64 x1) {
        const T wt = weight[tap];
#pragma omp simd
        for (i64 x = x0; x < x1; ++x) acc[x] += wt * src[x];
      });
      std::copy(acc.begin(), acc.end(), pre + row * w);
    }
  }
  const i64 total = n * hw;
  const Norm<T>& sn = blk.sn;
  double mu = 0, is = 1, g = 1, beta = 0;
  if (sn.mode == 1) {  // two passes: the mean, then the squared deviations
    double s = 0, ss = 0;
    for (i64 i = 0; i < total; ++i) s += pre[i];
    mu = s / total;
    for (i64 i = 0; i < total; ++i) ss += (pre[i] - mu) * (pre[i] - mu);
    const double var = ss / total;
    is = 1.0 / std::sqrt(var + sn.eps);
    sn.running_mean[0] = static_cast<T>(sn.momentum * mu + (1 - sn.momentum) * sn.running_mean[0]);
    sn.running_var[0] = static_cast<T>(sn.momentum * var * total / (total - 1) +
                                       (1 - sn.momentum) * sn.running_var[0]);
  } else if (sn.mode == 2) {
    mu = sn.running_mean[0];
    is = 1.0 / std::sqrt(static_cast<double>(sn.running_var[0]) + sn.eps);
  }
  if (sn.mode != 0) {
    g = sn.weight[0];
    beta = sn.bias[0];
  }
  st.spatial_stats.ptr[0] = mu;
  st.spatial_stats.ptr[1] = is;
  T* ms = st.ms.ptr;
#pragma omp parallel for num_threads(team(total * 16, threads)) schedule(static)
  for (i64 i = 0; i < total; ++i) {
    const T normed = sn.mode != 0 ? static_cast<T>((pre[i] - mu) * is * g + beta) : pre[i];
    ms[i] = sigmoid<T>(normed);
  }
}

// ---- Backward of the gates.

// The spatial attention's backward: from dL/dMs to dL/dF'^s_max (grad_smax), dL/dF'^s_avg / C
// (grad_mean) and the conv and norm parameters' gradients (each nullable).
template <typename T>
void spatial_attention_backward(const Block<T>& blk, const Saved& s, const T* grad_ms,
                                T* grad_smax, T* grad_mean, const Grads& out) {
  const i64 n = blk.n, h = blk.h, w = blk.w, c = blk.c, k = blk.k;
  const i64 r = k / 2, hw = h * w, total = n * hw;
  const T *ms = static_cast<const T*>(s.ms), *pre = static_cast<const T*>(s.pre),
          *smax = static_cast<const T*>(s.smax), *smean = static_cast<const T*>(s.smean),
          *weight = blk.conv_weight;
  T* grad_weight = static_cast<T*>(out.conv_weight);
  const int threads = blk.threads;
  std::vector<double> dpre(static_cast<size_t>(total));
  double sum_d = 0, sum_dx = 0;
  const double mu = s.spatial_stats[0], is = s.spatial_stats[1];
  for (i64 i = 0; i < total; ++i) {
    const double m = ms[i], d = grad_ms[i] * m * (1 - m);
    dpre[i] = d;
    sum_d += d;
    sum_dx += d * (pre[i] - mu) * is;
  }
  if (blk.sn.mode != 0) {
    const double g = blk.sn.weight[0] * is;
    const bool training = blk.sn.mode == 1;
    const double k1 = training ? sum_d / total : 0, k2 = training ? sum_dx / total : 0;
    for (i64 i = 0; i < total; ++i) dpre[i] = g * (dpre[i] - k1 - (pre[i] - mu) * is * k2);
    if (out.sn_weight != nullptr) static_cast<T*>(out.sn_weight)[0] = static_cast<T>(sum_dx);
    if (out.sn_bias != nullptr) static_cast<T*>(out.sn_bias)[0] = static_cast<T>(sum_d);
  }
  if (out.conv_bias != nullptr) {
    double sum = 0;
    for (i64 i = 0; i < total; ++i) sum += dpre[i];
    static_cast<T*>(out.conv_bias)[0] = static_cast<T>(sum);
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
      for_each_tap(smax, smean, b, y, h, w, k, [&](i64 tap, const T* src, i64 x0, i64 x1) {
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (i64 x = x0; x < x1; ++x) sum += d[x] * src[x];
        mine[tap] += sum;
      });
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

// Sums over a plane of dL/dF' (dy) and of dL/dF' * (x - center): the channel attention's and
// the norm's gradients are (N, C) algebra on them.
struct PlaneGradSums {
  std::vector<double> dy_sum, dy_x_sum;
  explicit PlaneGradSums(i64 nc) : dy_sum(nc), dy_x_sum(nc) {}
};

// dL/dF' = g * Ms + dL/dF'^s_avg / C + (dL/dF'^s_max at the first maximum) summed per plane,
// then the gradient of Mc's logits: dL/dMc * Mc (1 - Mc), dL/dMc = sum_p dL/dF' * F.
template <typename T>
std::vector<double> channel_attention_grad(const Block<T>& blk, const T* x, const Saved& s,
                                           const T* center, const double* gms_sum,
                                           const double* gms_x_sum, const double* mean_x_sum,
                                           const T* grad_mean, const T* grad_smax,
                                           PlaneGradSums& sums) {
  const i64 n = blk.n, c = blk.c, hw = blk.hw, nc = n * c;
  for (i64 q = 0; q < nc; ++q) {
    sums.dy_sum[q] = gms_sum[q];
    sums.dy_x_sum[q] = gms_x_sum[q] + mean_x_sum[q];
  }
  for (i64 b = 0; b < n; ++b) {
    double total = 0;
    for (i64 p = 0; p < hw; ++p) {
      const i64 ch = s.channel_of_max[b * hw + p];
      const double g = grad_smax[b * hw + p];
      total += grad_mean[b * hw + p];
      sums.dy_sum[b * c + ch] += g;
      sums.dy_x_sum[b * c + ch] += g * (x[(b * c + ch) * hw + p] - center[ch]);
    }
    for (i64 ch = 0; ch < c; ++ch) sums.dy_sum[b * c + ch] += total;
  }
  // F = (x - center) * sc + F(center) per channel.
  std::vector<double> dlogit(nc);
  const T* mc = static_cast<const T*>(s.mc);
  for (i64 ch = 0; ch < c; ++ch) {
    const double sc = blk.bn.mode == 0 ? 1.0 : blk.bn.weight[ch] * s.invstd[ch];
    const double at_center =
        blk.bn.mode == 0 ? 0.0 : blk.bn.bias[ch] + (center[ch] - s.mean[ch]) * sc;
    for (i64 b = 0; b < n; ++b) {
      const i64 q = b * c + ch;
      const double m = mc[q];
      dlogit[q] = (sums.dy_x_sum[q] * sc + sums.dy_sum[q] * at_center) * m * (1 - m);
    }
  }
  return dlogit;
}

// The MLP's backward, in T as the eager Linear layers: the gradients of w1, b1, w2, b2 and of
// the descriptors (ddesc, (P, N, C)).  The output layer's gradient is dlogit for every pool, so
// its weight gradient is dlogit^T (sum over pools of the hidden activations).
template <typename T>
void channel_mlp_backward(const Block<T>& blk, const Saved& s, const std::vector<double>& dlogit,
                          const Grads& out, std::vector<T>& ddesc) {
  const i64 n = blk.n, c = blk.c, hidden = blk.hidden, nc = n * c, pools = blk.pools,
            rows = pools * n;
  const T *hid = static_cast<const T*>(s.hid), *desc = static_cast<const T*>(s.desc),
          *w1 = blk.w1, *w2 = blk.w2;
  T *grad_w1 = static_cast<T*>(out.w1), *grad_b1 = static_cast<T*>(out.b1),
    *grad_w2 = static_cast<T*>(out.w2), *grad_b2 = static_cast<T*>(out.b2);
  std::vector<T> dl(nc), hid_sum(n * hidden, T(0)), dhid(rows * hidden);
  ddesc.assign(rows * c, T(0));
  for (i64 q = 0; q < nc; ++q) dl[q] = static_cast<T>(dlogit[q]);
  for (i64 p = 0; p < pools; ++p)
    for (i64 b = 0; b < n; ++b)
      for (i64 j = 0; j < hidden; ++j) hid_sum[b * hidden + j] += hid[(p * n + b) * hidden + j];
  const int team_size = team(2 * c * n * hidden, blk.threads);
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
        T* dd = ddesc.data() + rr * c;
        gb += d;
#pragma omp simd
        for (i64 i = i0; i < i1; ++i) {
          dd[i] += d * wj[i];
          gw[i] += d * dr[i];
        }
      }
      if (t == 0) grad_b1[j] = gb;
    }
  }
}

// The norm before CBAM: its weight and bias gradients from dL/dF (dz = Mc * dy + dL/davg / HW
// + dL/dmax at the spatial maximum), and the coefficients of the input gradient (BN's mean
// terms in training).
template <typename T>
void batch_norm_backward(const Block<T>& blk, const T* x, const Saved& s, const T* center,
                         const PlaneGradSums& sums, const std::vector<T>& ddesc,
                         const T* grad_smax, const Grads& out, InputGradTerms<T>& terms) {
  const i64 n = blk.n, c = blk.c, hw = blk.hw, nc = n * c;
  const T* mc = static_cast<const T*>(s.mc);
  std::vector<double> dz_sum(nc), dz_x_sum(nc), grad_avg(nc, 0.0), grad_max(nc, 0.0);
  for (i64 q = 0; q < nc; ++q) {
    const T cen = center[q % c];
    if (blk.use_avg) grad_avg[q] = ddesc[q];
    if (blk.use_max) grad_max[q] = ddesc[(blk.use_avg ? nc : 0) + q];
    const double m = mc[q];
    dz_sum[q] = m * sums.dy_sum[q] + grad_avg[q] + grad_max[q];
    dz_x_sum[q] = m * sums.dy_x_sum[q] + grad_avg[q] * (s.plane_mean[q] - cen);
    if (blk.use_max) dz_x_sum[q] += grad_max[q] * (x[q * hw + s.pixel_of_max[q]] - cen);
  }
  const double count = static_cast<double>(n * hw);
  for (i64 ch = 0; ch < c; ++ch) {
    double gain = 1, k0 = 0, kx = 0;
    if (blk.bn.mode != 0) {
      double gb = 0, gx = 0;
      for (i64 b = 0; b < n; ++b) {
        gb += dz_sum[b * c + ch];
        gx += dz_x_sum[b * c + ch];
      }
      const double off_center = center[ch] - s.mean[ch];  // x - mean = (x - center) + this
      const double gw = s.invstd[ch] * (gx + off_center * gb);  // sum dz * x_hat
      if (out.bn_weight != nullptr) static_cast<T*>(out.bn_weight)[ch] = static_cast<T>(gw);
      if (out.bn_bias != nullptr) static_cast<T*>(out.bn_bias)[ch] = static_cast<T>(gb);
      gain = blk.bn.weight[ch] * s.invstd[ch];
      if (blk.bn.mode == 1) {  // the batch mean and variance depend on x
        kx = -s.invstd[ch] * gw / count;
        k0 = -gb / count + kx * off_center;
      }
    }
    terms.coef_x[ch] = static_cast<T>(gain * kx);
    for (i64 b = 0; b < n; ++b) {
      const i64 q = b * c + ch;
      terms.coef_g[q] = static_cast<T>(gain * mc[q]);
      terms.coef_0[q] = static_cast<T>(gain * (grad_avg[q] / hw + k0));
      terms.route_plane_value[q] = static_cast<T>(gain * grad_max[q]);
    }
  }
  for (i64 b = 0; b < n; ++b)
    for (i64 p = 0; p < hw; ++p) {
      const i64 q = b * c + s.channel_of_max[b * hw + p];
      terms.route_pixel_value[b * hw + p] =
          static_cast<T>(static_cast<double>(terms.coef_g[q]) * grad_smax[b * hw + p]);
    }
}

// ---- One call per direction.

template <typename T>
void forward(const T* x, const T* shortcut, T* out, const Gates& g, const Saved& s) {
  const Block<T> blk(g);
  State<T> st(s, blk);
  const i64 n = blk.n, c = blk.c, hw = blk.hw;
  const bool training = s.plane_mean != nullptr;
  std::vector<double> plane_m2(static_cast<size_t>(n * c));
  std::vector<T> maxima(n * c), minima(n * c);
  std::vector<i64> argmax(training ? n * c : 0), argmin(training ? n * c : 0);
  plane_statistics<T>(x, n * c, c, hw, blk.bn.mode != 0 ? blk.bn.weight : nullptr,
                      st.plane_mean.ptr, plane_m2.data(), maxima.data(), minima.data(),
                      training ? argmax.data() : nullptr, training ? argmin.data() : nullptr,
                      blk.threads);
  batch_norm_statistics(blk, plane_m2.data(), st);
  channel_descriptors(blk, maxima.data(), minima.data(), argmax.data(), argmin.data(), st);
  channel_attention(blk, st);
  channel_pool<T>(x, n, c, hw, st.center.ptr, st.scale.ptr, st.shift.ptr, st.mc.ptr, st.smax.ptr,
                  st.smean.ptr, st.channel_of_max, blk.threads);
  spatial_attention(blk, st);
  apply_gates<T>(x, n, c, hw, st.center.ptr, st.scale.ptr, st.shift.ptr, st.mc.ptr, st.ms.ptr,
                 shortcut, out, blk.threads);
}

template <typename T>
void backward(const T* grad, const T* x, const Gates& g, const Saved& s, const Grads& out) {
  const Block<T> blk(g);
  const i64 n = blk.n, c = blk.c, hw = blk.hw;
  const T *scale = static_cast<const T*>(s.scale), *shift = static_cast<const T*>(s.shift),
          *mc = static_cast<const T*>(s.mc), *ms = static_cast<const T*>(s.ms);
  const T* center = static_cast<const T*>(s.center);
  std::vector<T> grad_ms(n * hw), grad_smax(n * hw), grad_mean(n * hw), ddesc;
  std::vector<double> gms_sum(n * c), gms_x_sum(n * c), mean_x_sum(n * c);
  grad_ms_and_plane_sums<T>(grad, x, n, c, hw, scale, shift, center, mc, ms,
                            grad_ms.data(), gms_sum.data(), gms_x_sum.data(), blk.threads);
  spatial_attention_backward(blk, s, grad_ms.data(), grad_smax.data(), grad_mean.data(), out);
  weighted_plane_sums<T>(x, grad_mean.data(), center, n, c, hw, mean_x_sum.data(),
                         blk.threads);
  PlaneGradSums sums(n * c);
  const std::vector<double> dlogit =
      channel_attention_grad(blk, x, s, center, gms_sum.data(), gms_x_sum.data(),
                             mean_x_sum.data(), grad_mean.data(), grad_smax.data(), sums);
  channel_mlp_backward(blk, s, dlogit, out, ddesc);
  InputGradTerms<T> terms(n, c, hw);
  batch_norm_backward(blk, x, s, center, sums, ddesc, grad_smax.data(), out, terms);
  if (out.input != nullptr)
    input_gradient(grad, x, blk, ms, grad_mean.data(), center, terms, s.channel_of_max,
                   s.pixel_of_max, static_cast<T*>(out.input));
}

}  // namespace

// Sizes and field offsets of the structs above, for the test that compares them with their
// ctypes mirrors: which 0 (Gates), 1 (Saved), 2 (Grads); out[0] the size, then each field's offset
// in declaration order.  Returns the count written.
#define CBAM_OFFSETS(S, ...) layout_of<S>(out, {__VA_ARGS__})
template <typename S>
i64 layout_of(i64* out, std::initializer_list<i64> offsets) {
  out[0] = sizeof(S);
  i64 count = 1;
  for (const i64 offset : offsets) out[count++] = offset;
  return count;
}
#define F(S, field) static_cast<i64>(offsetof(S, field))

i64 struct_layout(int which, i64* out) {
  switch (which) {
    case 0:
      return CBAM_OFFSETS(Gates, F(Gates, n), F(Gates, c), F(Gates, h), F(Gates, w),
                          F(Gates, bn_mode), F(Gates, bn_weight), F(Gates, bn_bias),
                          F(Gates, bn_running_mean), F(Gates, bn_running_var), F(Gates, bn_eps),
                          F(Gates, bn_momentum), F(Gates, hidden), F(Gates, w1), F(Gates, b1),
                          F(Gates, w2), F(Gates, b2), F(Gates, use_avg), F(Gates, use_max),
                          F(Gates, k), F(Gates, conv_weight), F(Gates, conv_bias),
                          F(Gates, sn_mode), F(Gates, sn_weight), F(Gates, sn_bias),
                          F(Gates, sn_running_mean), F(Gates, sn_running_var), F(Gates, sn_eps),
                          F(Gates, sn_momentum), F(Gates, threads));
    case 1:
      return CBAM_OFFSETS(Saved, F(Saved, plane_mean), F(Saved, mean), F(Saved, invstd),
                          F(Saved, spatial_stats), F(Saved, center), F(Saved, scale),
                          F(Saved, shift),
                          F(Saved, desc), F(Saved, hid), F(Saved, mc), F(Saved, smax),
                          F(Saved, smean), F(Saved, pre), F(Saved, ms), F(Saved, pixel_of_max),
                          F(Saved, channel_of_max));
    case 2:
      return CBAM_OFFSETS(Grads, F(Grads, input), F(Grads, bn_weight), F(Grads, bn_bias),
                          F(Grads, w1), F(Grads, b1), F(Grads, w2), F(Grads, b2),
                          F(Grads, conv_weight), F(Grads, conv_bias), F(Grads, sn_weight),
                          F(Grads, sn_bias));
    default:
      return 0;
  }
}
#undef F
#undef CBAM_OFFSETS

extern "C" {
i64 cbam_struct_layout(int which, i64* out) { return struct_layout(which, out); }
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
