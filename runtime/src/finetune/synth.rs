//! Synthetic rating sets shaped like public ones, with a known best achievable RMSE.
//!
//! `rating = mean + b_u + b_i + p_u·q_i + noise`, with `p, q ~ N(0, s²)` of a planted `rank`
//! (`s` chosen so that `p·q` has standard deviation `signal`), user and item biases normal, and
//! Gaussian noise of standard deviation `noise`: a model that recovers the plant scores RMSE
//! `noise`, so that is the floor. Who rates what follows popularity skew: items are drawn with
//! weight `1/(r + 1)^item_skew` by a random popularity rank `r`, users with `1/(r + 1)^user_skew`,
//! like the long tails of MovieLens and Netflix. Values are not clipped or rounded.

use super::trainer::{Rating, Rng};
use alloc::vec::Vec;

/// The shape of a synthetic set.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    pub users: usize,
    pub items: usize,
    pub ratings: usize,
    pub rank: usize,
    pub mean: f32,
    pub signal: f32,
    pub noise: f32,
    pub user_skew: f64,
    pub item_skew: f64,
    pub seed: u64,
}

impl SynthSpec {
    /// Shapes by name: `ml-10m` (10M ratings, 71,567 users, 10,681 items), `netflix` (100.5M,
    /// 480,189 users, 17,770 items), `ml-latest-small` (100,836, 610, 9,724), `tiny` (tests).
    pub fn named(name: &str) -> Option<SynthSpec> {
        let (users, items, ratings) = match name {
            "ml-10m" => (71_567, 10_681, 10_000_054),
            "netflix" => (480_189, 17_770, 100_480_507),
            "ml-latest-small" => (610, 9_724, 100_836),
            "tiny" => (300, 200, 20_000),
            _ => return None,
        };
        Some(SynthSpec {
            users,
            items,
            ratings,
            rank: 16,
            mean: 3.5,
            signal: 0.6,
            noise: 0.75,
            user_skew: 0.8,
            item_skew: 1.0,
            seed: 1,
        })
    }

    /// Generates the ratings (row ids dense from 0).
    pub fn generate(&self) -> Vec<Rating> {
        let mut rng = Rng::new(self.seed);
        let s = (self.signal as f64 / (self.rank as f64).sqrt()).sqrt();
        let mut normals = |n: usize, sd: f64| -> Vec<f32> {
            (0..n).map(|_| (rng.normal() * sd) as f32).collect()
        };
        let p = normals(self.users * self.rank, s);
        let q = normals(self.items * self.rank, s);
        let bu = normals(self.users, 0.3);
        let bi = normals(self.items, 0.4);
        let ucum = skewed_cdf(self.users, self.user_skew, &mut rng);
        let icum = skewed_cdf(self.items, self.item_skew, &mut rng);
        let r = self.rank;
        (0..self.ratings)
            .map(|_| {
                let u = draw(&ucum, &mut rng);
                let i = draw(&icum, &mut rng);
                let dot: f32 =
                    p[u * r..u * r + r].iter().zip(&q[i * r..i * r + r]).map(|(a, b)| a * b).sum();
                let v = self.mean + bu[u] + bi[i] + dot + (rng.normal() * self.noise as f64) as f32;
                Rating { user: u as u32, item: i as u32, value: v }
            })
            .collect()
    }
}

/// Cumulative weights `1/(r+1)^skew` over a random permutation of popularity ranks.
fn skewed_cdf(n: usize, skew: f64, rng: &mut Rng) -> Vec<f64> {
    let mut rank: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        rank.swap(i, rng.below(i + 1));
    }
    let mut acc = 0.0;
    rank.iter()
        .map(|r| {
            acc += 1.0 / ((*r + 1) as f64).powf(skew);
            acc
        })
        .collect()
}

fn draw(cdf: &[f64], rng: &mut Rng) -> usize {
    let x = rng.unit() * cdf[cdf.len() - 1];
    cdf.partition_point(|c| *c <= x).min(cdf.len() - 1)
}

/// Splits ratings into (train, held out) with a seeded coin of probability `frac`.
pub fn split(ratings: &[Rating], frac: f64, seed: u64) -> (Vec<Rating>, Vec<Rating>) {
    let mut rng = Rng::new(seed);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in ratings {
        if rng.unit() < frac {
            b.push(*r)
        } else {
            a.push(*r)
        }
    }
    (a, b)
}
