//! Exact optimal transport between two uniformly weighted point clouds (W1, W2), by the
//! transportation simplex: a spanning-tree basis, node potentials, block-search pricing and
//! pivots along the tree cycle. Masses are integers (each of the n samples carries m/g, each of
//! the m targets n/g, g = gcd(n, m)), so flows are exact and the only rounding is in the costs.

use crate::error::{Error, Result};

/// A basis cell: (row, column, flow).
pub type Cell = (usize, usize, i64);

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// W_p between point sets `x` (n points) and `y` (m points) of dimension `dim`, each with
/// uniform weights, for the Euclidean ground distance.
pub fn wasserstein(x: &[f64], y: &[f64], dim: usize, p: u32) -> Result<f64> {
    if dim == 0
        || !x.len().is_multiple_of(dim)
        || !y.len().is_multiple_of(dim)
        || x.is_empty()
        || y.is_empty()
    {
        return Err(Error::shape(
            "wasserstein",
            format!(
                "{} and {} values do not form non-empty sets of {dim}-D points",
                x.len(),
                y.len()
            ),
        ));
    }
    let (n, m) = (x.len() / dim, y.len() / dim);
    let g = gcd(n, m);
    let supply = vec![(m / g) as i64; n];
    let demand = vec![(n / g) as i64; m];
    let cost = |i: usize, j: usize| -> f64 {
        let d2: f64 = (0..dim)
            .map(|k| (x[i * dim + k] - y[j * dim + k]).powi(2))
            .sum();
        if p == 2 { d2 } else { d2.sqrt().powi(p as i32) }
    };
    let (total, _) = transport(&supply, &demand, cost)?;
    let mass = (n * m / g) as f64;
    Ok((total / mass).max(0.0).powf(1.0 / p as f64))
}

/// Minimum-cost transport of integer `supply` to integer `demand` (equal totals) with costs
/// `cost(i, j)`. Returns the optimal cost and the non-zero flows (i, j, amount).
pub fn transport(
    supply: &[i64],
    demand: &[i64],
    cost: impl Fn(usize, usize) -> f64,
) -> Result<(f64, Vec<Cell>)> {
    let (n, m) = (supply.len(), demand.len());
    if supply.iter().sum::<i64>() != demand.iter().sum::<i64>()
        || supply.iter().chain(demand).any(|&v| v <= 0)
    {
        return Err(Error::shape(
            "transport",
            "supplies and demands must be positive with equal totals",
        ));
    }
    let c: Vec<f64> = (0..n * m).map(|k| cost(k / m, k % m)).collect();
    let cmax = c.iter().cloned().fold(0.0, f64::max).max(1e-300);

    // Basis: n + m − 1 cells forming a spanning tree of the bipartite graph (rows 0..n,
    // columns n..n+m). Start from the north-west corner rule.
    let mut flow: Vec<Cell> = Vec::with_capacity(n + m - 1);
    {
        let (mut s, mut d) = (supply.to_vec(), demand.to_vec());
        let (mut i, mut j) = (0, 0);
        loop {
            let f = s[i].min(d[j]);
            flow.push((i, j, f));
            s[i] -= f;
            d[j] -= f;
            if i == n - 1 && j == m - 1 {
                break;
            }
            // Move right when the row is spent, except on the last row; keeps n + m − 1 cells.
            if s[i] == 0 && i < n - 1 {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    debug_assert_eq!(flow.len(), n + m - 1);

    let nodes = n + m;
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); nodes]; // basis cell indices per node
    for (k, &(i, j, _)) in flow.iter().enumerate() {
        adj[i].push(k);
        adj[n + j].push(k);
    }
    let mut pot = vec![0.0f64; nodes];
    let mut parent = vec![usize::MAX; nodes]; // basis cell to the parent
    let mut depth = vec![0usize; nodes];
    let block = ((n * m) as f64).sqrt().ceil() as usize;
    let mut next = 0usize;
    let max_pivots = 100 * (n + m) * (n + m).max(100);
    let mut queue = Vec::with_capacity(nodes);
    for _pivot in 0..max_pivots {
        // Potentials u_i + v_j = c_ij on basic cells, and the tree's parents/depths.
        parent.iter_mut().for_each(|p| *p = usize::MAX);
        queue.clear();
        queue.push(0);
        pot[0] = 0.0;
        depth[0] = 0;
        let mut seen = vec![false; nodes];
        seen[0] = true;
        let mut head = 0;
        while head < queue.len() {
            let a = queue[head];
            head += 1;
            for &k in &adj[a] {
                let (i, j, _) = flow[k];
                let b = if a == i { n + j } else { i };
                if !seen[b] {
                    seen[b] = true;
                    parent[b] = k;
                    depth[b] = depth[a] + 1;
                    // u_i + v_j = c_ij; potentials stored as u for rows, v for columns.
                    pot[b] = c[i * m + j] - pot[a];
                    queue.push(b);
                }
            }
        }
        // Block-search pricing: the most negative reduced cost in the first block that has one.
        let eps = 1e-12 * cmax;
        let mut best = (0.0, usize::MAX);
        let mut scanned = 0;
        while scanned < n * m {
            let end = (scanned + block).min(n * m);
            for _ in scanned..end {
                let (i, j) = (next / m, next % m);
                let r = c[next] - pot[i] - pot[n + j];
                if r < best.0 - eps {
                    best = (r, next);
                }
                next = (next + 1) % (n * m);
            }
            scanned = end;
            if best.1 != usize::MAX {
                break;
            }
        }
        if best.1 == usize::MAX {
            let total = flow.iter().map(|&(i, j, f)| f as f64 * c[i * m + j]).sum();
            let flows = flow.into_iter().filter(|f| f.2 > 0).collect();
            return Ok((total, flows));
        }
        let (ei, ej) = (best.1 / m, best.1 % m);
        // The cycle: entering (ei, ej) is +; the tree path from column ej to row ei alternates
        // −, +, −, … starting at ej.
        let (mut a, mut b) = (n + ej, ei);
        let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
        while depth[a] > depth[b] {
            from_a.push(parent[a]);
            a = other(&flow, parent[a], a, n);
        }
        while depth[b] > depth[a] {
            from_b.push(parent[b]);
            b = other(&flow, parent[b], b, n);
        }
        while a != b {
            from_a.push(parent[a]);
            a = other(&flow, parent[a], a, n);
            from_b.push(parent[b]);
            b = other(&flow, parent[b], b, n);
        }
        // Path from ej up to the common ancestor, then down to ei.
        let path: Vec<usize> = from_a.into_iter().chain(from_b.into_iter().rev()).collect();
        // Leaving cell: the smallest flow among the − cells (even positions).
        let (mut leave, mut theta) = (usize::MAX, i64::MAX);
        for (pos, &k) in path.iter().enumerate() {
            if pos % 2 == 0 && flow[k].2 < theta {
                theta = flow[k].2;
                leave = k;
            }
        }
        for (pos, &k) in path.iter().enumerate() {
            flow[k].2 += if pos % 2 == 0 { -theta } else { theta };
        }
        // Replace the leaving cell by the entering one in place.
        let (li, lj, _) = flow[leave];
        adj[li].retain(|&k| k != leave);
        adj[n + lj].retain(|&k| k != leave);
        flow[leave] = (ei, ej, theta);
        adj[ei].push(leave);
        adj[n + ej].push(leave);
    }
    Err(Error::Gpu(format!(
        "transport: no optimum after {max_pivots} pivots (cycling)"
    )))
}

/// The node at the other end of basis cell `k` from `node`.
fn other(flow: &[Cell], k: usize, node: usize, n: usize) -> usize {
    let (i, j, _) = flow[k];
    if node == i { n + j } else { i }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    fn permutations(k: usize) -> Vec<Vec<usize>> {
        if k == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(k - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, k - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn equal_weight_sets_match_brute_force_assignment() {
        for seed in 0..20 {
            let k = 2 + (seed as usize % 6); // 2..7 points
            let (x, y) = (lcg(2 * k, seed), lcg(2 * k, 100 + seed));
            for p in [1u32, 2] {
                let cost = |i: usize, j: usize| {
                    let d = ((x[2 * i] - y[2 * j]).powi(2) + (x[2 * i + 1] - y[2 * j + 1]).powi(2))
                        .sqrt();
                    d.powi(p as i32)
                };
                let brute = permutations(k)
                    .iter()
                    .map(|perm| {
                        perm.iter()
                            .enumerate()
                            .map(|(i, &j)| cost(i, j))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min);
                let want = (brute / k as f64).powf(1.0 / p as f64);
                let got = wasserstein(&x, &y, 2, p).unwrap();
                assert!(
                    (got - want).abs() < 1e-12 * (1.0 + want),
                    "k={k} p={p}: {got} vs brute force {want}"
                );
            }
        }
    }

    /// W_p in 1D between uniform sets is the L_p distance of the quantile functions.
    fn quantile_1d(x: &[f64], y: &[f64], p: u32) -> f64 {
        let (mut a, mut b) = (x.to_vec(), y.to_vec());
        a.sort_by(|u, v| u.partial_cmp(v).unwrap());
        b.sort_by(|u, v| u.partial_cmp(v).unwrap());
        let (n, m) = (a.len(), b.len());
        // Breakpoints k/n and l/m on [0, 1].
        let mut cuts: Vec<f64> = (0..=n)
            .map(|k| k as f64 / n as f64)
            .chain((0..=m).map(|l| l as f64 / m as f64))
            .collect();
        cuts.sort_by(|u, v| u.partial_cmp(v).unwrap());
        let mut s = 0.0;
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            if hi - lo <= 0.0 {
                continue;
            }
            let mid = 0.5 * (lo + hi);
            let (qa, qb) = (
                a[((mid * n as f64) as usize).min(n - 1)],
                b[((mid * m as f64) as usize).min(m - 1)],
            );
            s += (hi - lo) * (qa - qb).abs().powi(p as i32);
        }
        s.powf(1.0 / p as f64)
    }

    #[test]
    fn unequal_sizes_match_the_1d_closed_form() {
        for (n, m, seed) in [(7usize, 3usize, 1u64), (50, 14, 2), (1000, 142, 3)] {
            let x = lcg(n, seed);
            let y: Vec<f64> = lcg(m, seed + 50).iter().map(|v| 3.0 * v + 0.5).collect();
            for p in [1u32, 2] {
                let got = wasserstein(&x, &y, 1, p).unwrap();
                let want = quantile_1d(&x, &y, p);
                assert!(
                    (got - want).abs() < 1e-9 * (1.0 + want),
                    "n={n} m={m} p={p}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn identical_sets_are_at_distance_zero_and_bad_input_is_refused() {
        let x = lcg(40, 9);
        assert!(wasserstein(&x, &x, 2, 2).unwrap() < 1e-12);
        assert!(
            wasserstein(&x, &x[..3], 2, 2)
                .unwrap_err()
                .to_string()
                .contains("wasserstein")
        );
    }
}
