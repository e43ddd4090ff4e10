"""Quick start: define a model in the DSL, print its IR, run it on the reference backend."""
import numpy as np

import irgraph as ig


class MLP(ig.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = ig.nn.Linear(16, 32)
        self.layer2 = ig.nn.Linear(32, 10)

    def forward(self, x):
        return ig.F.log_softmax(self.layer2(ig.F.relu(self.layer1(x))), dim=1)


def main():
    ig.manual_seed(0)
    model = MLP()
    spec = ig.TensorSpec((8, 16), "float32")
    print(ig.trace(model, spec))
    run = ig.compile(model, spec, backend="reference")
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    out = run(x)
    print("log-probabilities of the first row:", np.round(out[0], 4))
    print("rows sum to one:", np.allclose(np.exp(out).sum(1), 1, atol=1e-5))


if __name__ == "__main__":
    main()
