"""Gaussian diffusion as DiT trains and samples it (Ho et al. 2020; Nichol & Dhariwal 2021; Peebles & Xie 2023).

One class covers the 1000-step training chain and its evenly respaced sampling chains: linear betas, epsilon
prediction, and either the learned-range variance (when the network outputs ``2C`` channels) or the fixed-large
variance. The training loss is MSE on epsilon plus, for learned variance, the variational bound term with a stop
gradient on epsilon, exactly as DiT's ``training_losses``. The predicted clean sample ``x0_hat`` is returned with
its gradient, because Minimax fine-tuning compares it against its memories.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["GaussianDiffusion", "respaced_timesteps"]


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def _normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``x`` in [-1, 1] under a Gaussian discretised into 256 bins (the t = 0 decoder term)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps over ``[0, num_timesteps - 1]`` (DiT's ``space_timesteps(T, "50")``)."""
    if steps >= num_timesteps:
        return list(range(num_timesteps))
    if steps < 2:
        raise ValueError("sampling needs at least 2 steps")
    stride = (num_timesteps - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)})


class GaussianDiffusion:
    """A diffusion chain with its precomputed coefficients.

    Args:
        betas: the chain's betas (float64 recommended).
        learn_sigma: the network predicts ``[eps, v]`` with ``v`` interpolating the log-variance in
            ``[log posterior variance, log beta]`` (learned range); otherwise the fixed-large variance is used.
        timestep_map: for a respaced chain, the original timestep each step corresponds to (what the network sees).
        prediction: what the network's first ``C`` channels predict: ``epsilon`` (DiT, the reference) or
            ``v_prediction`` (``v = sqrt(abar) eps - sqrt(1 - abar) x0``; an option for pretraining from scratch,
            where it learns the high-noise steps far sooner). Either way the loss is the MSE on that target.
    """

    def __init__(self, betas: torch.Tensor, learn_sigma: bool = True,
                 timestep_map: torch.Tensor | None = None, prediction: str = "epsilon") -> None:
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction must be epsilon or v_prediction, got {prediction!r}")
        self.prediction = prediction
        betas = betas.double()
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        self.timestep_map = timestep_map if timestep_map is not None else torch.arange(self.num_timesteps)
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.posterior_variance = betas * (1.0 - prev) / (1.0 - self.alphas_cumprod)
        if self.num_timesteps > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        else:
            clipped = self.posterior_variance.clamp_min(1e-20)
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        # Fixed-large variance: betas, with the first entry replaced by the posterior variance (as DDPM/DiT).
        self.fixed_large_log_variance = torch.cat([self.posterior_variance[1:2], betas[1:]]).log()

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               learn_sigma: bool = True, prediction: str = "epsilon") -> GaussianDiffusion:
        """The DDPM linear schedule (DiT: 1000 steps from 1e-4 to 0.02)."""
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(betas, learn_sigma, prediction=prediction)

    @classmethod
    def from_schedule(cls, schedule: str, num_timesteps: int, beta_start: float, beta_end: float,
                      learn_sigma: bool, prediction: str = "epsilon") -> GaussianDiffusion:
        """``linear`` or ``scaled_linear`` (Stable Diffusion) betas."""
        if schedule == "linear":
            return cls.linear(num_timesteps, beta_start, beta_end, learn_sigma, prediction)
        if schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
            return cls(betas, learn_sigma, prediction=prediction)
        raise ValueError(f"unsupported beta schedule {schedule!r} (use linear or scaled_linear)")

    def respace(self, steps: int) -> GaussianDiffusion:
        """The chain restricted to ``steps`` evenly spaced timesteps, with betas recomputed from alpha-bar."""
        keep = respaced_timesteps(self.num_timesteps, steps)
        if len(keep) == self.num_timesteps:
            return self
        last, betas = 1.0, []
        for t in keep:
            ac = float(self.alphas_cumprod[t])
            betas.append(1.0 - ac / last)
            last = ac
        mapped = self.timestep_map[torch.tensor(keep)]
        return GaussianDiffusion(torch.tensor(betas, dtype=torch.float64), self.learn_sigma, mapped, self.prediction)

    # ------------------------------------------------------------------------------------------------- maths
    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = values.to(t.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse ``x0`` to step ``t``."""
        scale = self._at(self.sqrt_alphas_cumprod, t, x0)
        return scale * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The clean sample implied by a noise prediction: ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
        scale = self._at(self.sqrt_recip_alphas_cumprod, t, x_t)
        return scale * x_t - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)

    def split_output(self, output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prediction, v)`` from the network output (``v`` is None for fixed variance)."""
        if self.learn_sigma:
            if output.shape[1] != 2 * channels:
                raise ValueError(f"a learned-variance model outputs {2 * channels} channels, got {output.shape[1]}")
            return output[:, :channels], output[:, channels:]
        return output[:, :channels], None

    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, log-variance and ``x0_hat`` of p(x_{t-1} | x_t) from the network output.

        ``clip`` clamps ``x0_hat`` to [-1, 1] (``clip_denoised`` of the ADM code: right for pixels, off for
        latents, which the reference samples unclipped).
        """
        pred, v = self.split_output(output, x_t.shape[1])
        eps, x0 = self.eps_and_x0(pred, x_t, t)
        if v is not None:
            min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._at(self.betas.log(), t, x_t)
            frac = (v + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
        else:
            log_var = self._at(self.fixed_large_log_variance, t, x_t).expand_as(x_t)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, log_var, x0

    def eps_and_x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and clean-sample estimates from the network's prediction (epsilon or v)."""
        if self.prediction == "epsilon":
            return pred, self.predict_x0(x_t, t, pred)
        a = self._at(self.sqrt_alphas_cumprod, t, x_t)
        b = self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return b * x_t + a * pred, a * x_t - b * pred

    def epsilon_jacobian_x0(self, x0_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0_hat`` with its gradient rescaled to the epsilon-parameterisation's Jacobian (same value).

        Under v-prediction ``d x0_hat / d v = -sqrt(1 - abar)``; under epsilon-prediction ``d x0_hat / d eps =
        -sqrt(1 - abar) / sqrt(abar)``. Dividing the gradient path by ``sqrt(abar)`` gives a v-model's Minimax
        terms the strength they have in the reference's epsilon model (an extension, off by default).
        """
        if self.prediction == "epsilon":
            return x0_hat
        scale = self._at(self.sqrt_alphas_cumprod, t, x0_hat)
        frozen = x0_hat.detach()
        return frozen + (x0_hat - frozen) / scale

    # ------------------------------------------------------------------------------------------------ training
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``abar / (1 - abar)`` at chain steps ``t`` (float32)."""
        abar = self.alphas_cumprod.to(t.device)[t]
        return (abar / (1.0 - abar)).float()

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights of the MSE term (Hang et al., ICCV 2023): ``min(SNR, gamma) / SNR`` for
        epsilon-prediction and ``min(SNR, gamma) / (SNR + 1)`` for v-prediction, which weight each step's x0 error
        by ``min(SNR, gamma)``."""
        snr = self.snr(t)
        return snr.clamp(max=gamma) / (snr if self.prediction == "epsilon" else snr + 1.0)

    def training_losses(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                        t: torch.Tensor, noise: torch.Tensor, min_snr_gamma: float = 0.0) -> dict[str, torch.Tensor]:
        """Per-sample losses at timesteps ``t`` (indices into this chain).

        ``min_snr_gamma`` > 0 weights the MSE term by :meth:`min_snr_weight` (an option for pretraining; the VB
        term, which trains the variance, is not weighted). Returns ``loss`` (weighted MSE on the prediction target
        + VB), ``mse`` (unweighted), ``vb`` (zeros for fixed variance), and ``x0_hat`` with its gradient.
        """
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, self.timestep_map.to(t.device)[t])
        pred, v = self.split_output(output, x0.shape[1])
        pred = pred.float()
        if self.prediction == "epsilon":
            target = noise
        else:
            target = self._at(self.sqrt_alphas_cumprod, t, x0) * noise - self._at(
                self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        mse = _mean_flat((target - pred) ** 2)
        _, x0_hat = self.eps_and_x0(pred, x_t, t)
        if v is not None:
            frozen = torch.cat([pred.detach(), v], dim=1).float()  # the VB term only trains the variance
            vb = self._vb_bits(frozen, x0, x_t, t)
        else:
            vb = torch.zeros_like(mse)
        weighted = mse * self.min_snr_weight(t, min_snr_gamma).to(mse.dtype) if min_snr_gamma > 0 else mse
        return {"loss": weighted + vb, "mse": mse, "vb": vb, "x0_hat": x0_hat}

    def _vb_bits(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var, _ = self.p_mean_variance(output, x_t, t)
        kl = _mean_flat(_normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -_mean_flat(_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
               progress: Callable[[int], None] | None = None, clip_denoised: bool = False,
               guide: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """Ancestral sampling (DDPM) over this chain.

        Args:
            model: ``(x_t, timesteps) -> output`` (timesteps are the original-chain values).
            noise: ``[N, num_timesteps + 1, C, H, W]``: the start noise then one draw per step, per image, so
                every image is a function of its own noise only (regenerable from its seed).
            progress: called with 1 after each step.
            clip_denoised: clamp each step's ``x0_hat`` to [-1, 1] (pixel-space models).
            guide: sampling-time guidance (MGD3, IGD): ``guide(index=i, x=x_t, x_next=..., mean=..., log_var=...,
                x0=..., output=..., chain=self)`` returns the next sample; ``i`` is the step's index in this
                chain (``num_timesteps - 1`` first, 0 last).
        """
        if noise.dim() != 5 or noise.shape[1] < self.num_timesteps + 1:
            raise ValueError(f"noise must be [N, {self.num_timesteps + 1}, C, H, W]")
        x = noise[:, 0]
        n = x.shape[0]
        for k, i in enumerate(reversed(range(self.num_timesteps))):
            t = torch.full((n,), i, dtype=torch.long, device=x.device)
            output = model(x, self.timestep_map.to(x.device)[t]).float()
            mean, log_var, x0 = self.p_mean_variance(output, x, t, clip_denoised)
            x_next = mean + torch.exp(0.5 * log_var) * noise[:, k + 1] if i > 0 else mean
            if guide is not None:
                x_next = guide(index=i, x=x, x_next=x_next, mean=mean, log_var=log_var, x0=x0, output=output,
                               chain=self)
            x = x_next
            if progress is not None:
                progress(1)
        return x
