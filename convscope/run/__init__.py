"""Running `convscope train`: one module per stage, in the order a run goes through them.

    cli.py             the command line, parsed into a TrainConfig (config.py; recipes.py
                       names the sets of settings a run starts from)
    run/launch.py      several processes or machines: starts them with torch's elastic launcher
    run/train.py       run_training: prepares and locks the run folder, trains, resumes
    run/data.py        the dataset `--data` names, loaded and split
    run/learner.py     the Learner the config asks for
    run/outputs.py     the result, the run folder's files and figures, the report
    run_folder.py      the run folder: its file names, reading it back, resume queries
    report.py          the HTML report, drawn from the run folder alone
"""

from convscope.config import TrainConfig
from convscope.run.data import check_data, load_data
from convscope.run.learner import make_learner
from convscope.run.train import TrainResult, run_training

__all__ = ["TrainConfig", "TrainResult", "check_data", "load_data", "make_learner",
           "run_training"]
