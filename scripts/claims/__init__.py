"""The claims of docs/, each a falsifiable numerical check: one module per group of claims, to be
read beside the section of docs/ that derives them.

    module              claims              explained in
    importance.py       C1-C4               docs/guide.md C1-C4 (sampling the prior, importance
                                            sampling, var(w)/n, zero variance at the posterior)
    bounds.py           C5, IWAE, C6, C7    docs/guide.md C5-C7 (Jensen and the ELBO, the gap is
                                            KL(q || p(z|x)), ELBO = -(distortion + KL));
                                            docs/iwae.md (the IWAE bound against K)
    beta.py             C8                  docs/guide.md C8 (beta trades distortion for rate)
    estimators.py       C9-C12              docs/guide.md C9-C12, docs/estimators.md C9-C12
    estimators_vae.py   E1-E5               docs/estimators.md "The real encoder", "Bernoulli
                                            latents" (E1-E3, E4-E5)
    disentanglement.py  D1-D4               docs/disentanglement.md "The study"
    context.py          what C1-C12 share: their sizes, the two linear-Gaussian models with exact
                        answers, the tolerance rules
    harness.py          a claim (id, statement, check -> Verdict, figure), running the checks,
                        the table, the JSON record, the exit status

The commands: scripts/derivation.py (C1-C12 and IWAE), scripts/estimators_vae.py (E1-E5),
scripts/disentanglement.py (D1-D4); each has --quick and --out, writes its record and figures to
--out and exits with status 1 if any claim is NOT verified.
"""
import os

# One BLAS thread: the matrices of the claims are small (at most 64 x 1024 x 200 per training
# step), a second OpenBLAS thread gains little, and on a shared 2-core machine its spinning
# threads made the derivation's --quick beta sweep ~10x slower (measured: 2.4 s against
# 20-26 s).  The variable acts only if set before NumPy loads (a script run, which imports this
# package first); harness.one_blas_thread covers an import after NumPy (the tests).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
