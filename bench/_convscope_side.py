"""convscope's side of bench/vs_fastai.py: the same recipe on the embedded MNIST. Prints one
JSON line: what it measured."""

import json
import sys
import time

start = time.perf_counter()
from convscope import ChannelsLast, DataLoaders, Learner, mnist, simple_cnn  # noqa: E402

imported = time.perf_counter() - start


def main() -> None:
    epochs, lr, bs, device = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dls = DataLoaders.from_data(mnist(), bs=bs, device=device)
    learn = Learner(dls, simple_cnn(), cbs=[ChannelsLast()], progress=False)
    fit_start = time.perf_counter()
    learn.fit_one_cycle(epochs, lr)
    fit_s = time.perf_counter() - fit_start
    acc = learn.validate()["accuracy"]
    print(json.dumps({"import_s": imported, "fit_s": fit_s,
                      "epoch_s": [v["time"] for v in learn.recorder.values], "accuracy": acc}))


if __name__ == "__main__":
    main()
