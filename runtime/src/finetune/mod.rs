//! On-device fine-tuning of embedding tables: biased matrix factorization by SGD.
//!
//! Model: `r̂(u, i) = μ + b_u + b_i + p_u·q_i`, clamped to the rating range seen in training.
//! Training: plain SGD over the ratings (learning rate `lr`, L2 `reg` on the factor rows,
//! `reg_bias` on the biases), one kernel call per rating ([`ember_kernels::MfStepF32Fn`] or its
//! f16 twin), so the arithmetic is the kernels' and the same on every ISA.
//!
//! Threads without locks on the rows: users and items are hashed into `B × B` blocks
//! (`B` = threads) and an epoch is `B` rounds; in round `r` thread `t` takes block
//! `(t, (t + r + epoch) mod B)`, so no two threads ever touch the same user or item row in a round
//! (a Latin square, like LIBMF's scheduler but static). Rounds end at a barrier (the [`Pool`]).
//! Ratings are shuffled once, then stored block by block as 12-byte records.
//!
//! Precision ([`Precision`]): `Fp32` stores rows as f32; `Fp16` as f16 bits (half the bytes per
//! update, f32 arithmetic); `Auto` starts in f16 and converts to f32 once, in place, when the
//! share of element updates lost to the 16-bit storage passes `lost_limit`, or when validation
//! RMSE (training loss without a validation set) improves by less than `plateau` (relative) over
//! two epochs: from there on the updates are small, and 16-bit storage would round the last
//! improvements away. The switch and its reason are reported.
//!
//! One user can also be fitted alone, in closed form against frozen item rows ([`UserFit`]):
//! the fast path for a new or changed user on the device.
//!
//! Rules: training allocates at set-up and at the switch only; bad input is an [`MfError`].

pub mod synth;
mod trainer;
mod user;

pub use trainer::{
    check_ratings, rating_stats, EpochStats, Factors, MfError, Precision, Rating, Rng, Rows,
    Switch, Table, TrainConfig, Trainer,
};
pub use user::UserFit;
