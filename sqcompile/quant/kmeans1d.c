/* Weighted 1-D k-means per row on sorted values with prefix sums: the CPU kernel of sqcompile.quant.kmeans.
 *
 * Same algorithm as the batched torch version there (greedy weighted k-means++ seeding drawn from the prefix
 * sums, Lloyd steps by binary search of the midpoints, best of n_init runs), one row per task: the torch
 * version pays a memory sweep per tiny tensor op, this one keeps a row in cache. Rows are independent and
 * each draws from its own splitmix64 stream seeded by (seed, row), so results do not depend on threads.
 *
 * Inputs per row r (row-major, float64): xs[r, n] ascending; P0/P1/P2[r, n+1] prefix sums of w, w x, w x^2
 * with a leading zero. Outputs: centroids[r, k] ascending, sse[r], iterations[r] (max over the runs).
 * Build: cc -O3 -fPIC -shared -fopenmp kmeans1d.c -o kmeans1d.so -lm
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define MAX_K 256

static inline uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline double next_uniform(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

/* first i in [lo, hi) with a[i] >= v, hi if none */
static inline int64_t lower_bound(const double *a, int64_t lo, int64_t hi, double v) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
}

typedef struct { const double *x, *p0, *p1, *p2; int64_t n; } Row;

/* sum of w (x - c)^2 over sorted positions [a, b) */
static inline double run_cost(const Row *r, int64_t a, int64_t b, double c) {
    double sw = r->p0[b] - r->p0[a], swx = r->p1[b] - r->p1[a], swxx = r->p2[b] - r->p2[a];
    double v = swxx - 2.0 * c * swx + c * c * sw;
    return v > 0.0 ? v : 0.0;
}

/* cluster boundaries of ascending centroids c[0..j): cuts[0] = 0, cuts[j] = n */
static void cuts_of(const Row *r, const double *c, int j, int64_t *cuts) {
    cuts[0] = 0;
    for (int s = 1; s < j; s++) cuts[s] = lower_bound(r->x, cuts[s - 1], r->n, 0.5 * (c[s - 1] + c[s]));
    cuts[j] = r->n;
}

static void insert_sorted(double *c, int j, double v) {
    int s = j;
    while (s > 0 && c[s - 1] > v) { c[s] = c[s - 1]; s--; }
    c[s] = v;
}

/* lower potential when adding centroid v to ascending c[0..j): only points between the new midpoints move */
static double reduction(const Row *r, const double *c, int j, double v) {
    int pos = (int)lower_bound(c, 0, j, v);
    int has_l = pos > 0, has_r = pos < j;
    double L = has_l ? c[pos - 1] : 0.0, R = has_r ? c[pos] : 0.0;
    int64_t i1 = has_l ? lower_bound(r->x, 0, r->n, 0.5 * (L + v)) : 0;
    int64_t i2 = has_r ? lower_bound(r->x, i1, r->n, 0.5 * (v + R)) : r->n;
    double old;
    if (has_l && has_r) {
        int64_t im = lower_bound(r->x, i1, i2, 0.5 * (L + R));
        old = run_cost(r, i1, im, L) + run_cost(r, im, i2, R);
    } else {
        old = run_cost(r, i1, i2, has_l ? L : R);
    }
    return old - run_cost(r, i1, i2, v);
}

static void seed_centroids(const Row *r, int k, uint64_t *rng, double *c) {
    int64_t n = r->n, cuts[MAX_K + 1];
    double cost[MAX_K];
    int trials = 2 + (int)log((double)k);
    /* first: drawn with probability proportional to w */
    double u = next_uniform(rng) * r->p0[n];
    int64_t i = lower_bound(r->p0 + 1, 0, n, nextafter(u, INFINITY));
    c[0] = r->x[i < n ? i : n - 1];
    for (int j = 1; j < k; j++) {
        cuts_of(r, c, j, cuts);
        double total = 0.0;
        for (int s = 0; s < j; s++) total += (cost[s] = run_cost(r, cuts[s], cuts[s + 1], c[s]));
        double best_red = -1.0, best = c[0];
        for (int t = 0; t < trials; t++) {
            /* a point with probability proportional to w D^2: its cluster by cost, then inside it */
            double rest = next_uniform(rng) * total;
            int s = 0;
            while (s < j - 1 && rest >= cost[s]) rest -= cost[s++];
            int64_t lo = cuts[s] + 1, hi = cuts[s + 1] > cuts[s] ? cuts[s + 1] : cuts[s] + 1;
            while (lo < hi) { /* smallest i in (cuts[s], cuts[s+1]] with cost of [cuts[s], i) > rest */
                int64_t mid = lo + (hi - lo) / 2;
                if (run_cost(r, cuts[s], mid, c[s]) > rest) hi = mid; else lo = mid + 1;
            }
            int64_t at = hi - 1 < n ? hi - 1 : n - 1;
            double v = r->x[at], red = reduction(r, c, j, v);
            if (red > best_red) { best_red = red; best = v; }
        }
        insert_sorted(c, j, best);
    }
}

/* Lloyd steps from ascending c; returns the number of steps, writes the SSE */
static int lloyd(const Row *r, int k, int iters, double *c, double *sse) {
    int64_t cuts[MAX_K + 1];
    double next[MAX_K];
    int it = 0;
    for (it = 1; it <= iters; it++) {
        cuts_of(r, c, k, cuts);
        for (int s = 0; s < k; s++) {
            double sw = r->p0[cuts[s + 1]] - r->p0[cuts[s]];
            next[s] = sw > 0.0 ? (r->p1[cuts[s + 1]] - r->p1[cuts[s]]) / sw : c[s];
        }
        for (int s = 1; s < k; s++) { double v = next[s]; int q = s; while (q > 0 && next[q - 1] > v) { next[q] = next[q - 1]; q--; } next[q] = v; }
        if (memcmp(next, c, sizeof(double) * k) == 0) break;
        memcpy(c, next, sizeof(double) * k);
    }
    if (it > iters) it = iters;
    cuts_of(r, c, k, cuts);
    double total = 0.0;
    for (int s = 0; s < k; s++) total += run_cost(r, cuts[s], cuts[s + 1], c[s]);
    *sse = total;
    return it;
}

int kmeans1d(const double *xs, const double *p0, const double *p1, const double *p2, int64_t rows, int64_t n,
             int k, int iters, int n_init, uint64_t seed, int threads, double *centroids, double *sse,
             int32_t *iterations) {
    if (k < 1 || k > MAX_K || n < 1) return -1;
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t i = 0; i < rows; i++) {
        Row r = {xs + i * n, p0 + i * (n + 1), p1 + i * (n + 1), p2 + i * (n + 1), n};
        uint64_t rng = seed * 0xD1B54A32D192ED03ULL ^ (uint64_t)i * 0x9E3779B97F4A7C15ULL;
        double c[MAX_K], best = INFINITY, s;
        int most = 0;
        for (int run = 0; run < n_init; run++) {
            seed_centroids(&r, k, &rng, c);
            int it = lloyd(&r, k, iters, c, &s);
            if (it > most) most = it;
            if (s < best) { best = s; memcpy(centroids + i * k, c, sizeof(double) * k); }
        }
        sse[i] = best;
        iterations[i] = most;
    }
    return 0;
}

/* ---- exact optimum: dynamic programming over the sorted values ----------------------------------------
 * D[m][j] = min_i D[m-1][i] + cost(i, j): the best SSE of x[0..j) in m+1 runs. cost is the weighted SSE of a
 * run around its weighted mean; it satisfies the quadrangle inequality, so the leftmost best split i is
 * monotone in j and each layer is solved by divide and conquer over j in O(n log n) (Gronlund et al. 2017).
 */

/* weighted SSE of the run [a, b) around its weighted mean */
static inline double mean_cost(const Row *r, int64_t a, int64_t b) {
    double sw = r->p0[b] - r->p0[a];
    if (sw <= 0.0) return 0.0;
    double swx = r->p1[b] - r->p1[a], v = (r->p2[b] - r->p2[a]) - swx * swx / sw;
    return v > 0.0 ? v : 0.0;
}

typedef struct { const Row *r; const double *prev; double *cur; int32_t *back; } Layer;

static void solve_layer(const Layer *L, int64_t jlo, int64_t jhi, int64_t olo, int64_t ohi) {
    while (jlo <= jhi) {
        int64_t mid = jlo + (jhi - jlo) / 2, stop = mid < ohi ? mid : ohi, arg = olo;
        double best = INFINITY;
        for (int64_t i = olo; i <= stop; i++) {
            double v = L->prev[i] + mean_cost(L->r, i, mid);
            if (v < best) { best = v; arg = i; }
        }
        L->cur[mid] = best;
        L->back[mid] = (int32_t)arg;
        solve_layer(L, jlo, mid - 1, olo, arg); /* left half recursively, right half by the loop */
        jlo = mid + 1;
        olo = arg;
    }
}

static double run_centroid(const Row *r, int64_t a, int64_t b) {
    double sw = r->p0[b] - r->p0[a];
    if (sw > 0.0) return (r->p1[b] - r->p1[a]) / sw;
    if (a < b) return 0.5 * (r->x[a] + r->x[b - 1]); /* only weight-zero points: any value inside serves */
    return r->x[a < r->n ? a : r->n - 1];           /* empty run: an unused entry */
}

int kmeans1d_optimal(const double *xs, const double *p0, const double *p1, const double *p2, int64_t rows,
                     int64_t n, int k, int threads, double *centroids, double *sse) {
    if (k < 1 || k > MAX_K || n < 1 || n >= INT32_MAX) return -1;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        double *prev = malloc(sizeof(double) * (n + 1)), *cur = malloc(sizeof(double) * (n + 1));
        int32_t *back = malloc(sizeof(int32_t) * (size_t)k * (n + 1));
        if (!prev || !cur || !back) failed = 1;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < rows; i++) {
            if (failed) continue;
            Row r = {xs + i * n, p0 + i * (n + 1), p1 + i * (n + 1), p2 + i * (n + 1), n};
            double *D = prev, *E = cur;
            for (int64_t j = 0; j <= n; j++) D[j] = mean_cost(&r, 0, j);
            for (int m = 1; m < k; m++) {
                Layer L = {&r, D, E, back + (size_t)m * (n + 1)};
                solve_layer(&L, 0, n, 0, n);
                double *t = D; D = E; E = t;
            }
            sse[i] = D[n];
            int64_t end = n;
            for (int m = k - 1; m > 0; m--) {
                int64_t start = back[(size_t)m * (n + 1) + end];
                centroids[i * k + m] = run_centroid(&r, start, end);
                end = start;
            }
            centroids[i * k] = run_centroid(&r, 0, end);
        }
        free(prev); free(cur); free(back);
    }
    return failed ? -2 : 0;
}
