"""The notes' running example as data: will this customer click the ad? Synthetic, seeded, with a known answer.

Every row is a customer shown an ad. The click probability is a fixed function of the columns below, so the
best any model can do (the Bayes-optimal AUC and log loss, scoring each test row by its true probability) is
known and written into metrics.json next to the model's own figures. What makes a network worth it here:
  - non-linear effects: clicks peak at age ~32, saturate in salary, rise ever more slowly with previous spend (log)
    and fall with items purchased (square root);
  - an XOR-like interaction a linear model cannot represent: older customers who stay long on the site and
    young ones who leave quickly click more; old-and-brief or young-and-lingering customers click less;
  - a second interaction: phones in the evening;
  - categorical fields, ad_topic and city with about a thousand and three thousand levels, whose effects can
    only be learned through an embedding per level; device is missing for some rows.
`world` (the levels' effects and frequencies) comes from `seed` alone; rows are drawn from a stream per split,
so the test rows never depend on how many training rows were drawn.
"""
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from data import UserInputError
from data.batches import one_label, split_indices
from data.tabular import TabularDataModule

NUMERIC = ["age", "salary", "previous_spend", "items_purchased", "time_on_site"]
CATEGORICAL = ["country", "device", "ad_topic", "hour", "city"]
HEAVY_TAILED = ["salary", "previous_spend", "items_purchased", "time_on_site"]  # log-transformed by the model's data
DEVICES = np.array(["phone", "desktop", "tablet"])
SPLITS = {"train": 1, "test": 2}  # row streams


def world(seed: int) -> dict:
    rng = np.random.default_rng([seed, 0])

    def zipf(n, s):  # level frequencies, most common first
        return (w := 1 / np.arange(1, n + 1) ** s) / w.sum()

    return {
        "country_p": zipf(40, 1.0), "country_effect": rng.normal(0, 0.4, 40),
        "topic_p": zipf(1000, 0.3), "topic_effect": rng.normal(0, 0.6, 1000),
        "city_country": rng.choice(40, 3000, p=zipf(40, 1.0)),  # each city lies in one country
        "city_p": zipf(3000, 0.2), "city_effect": rng.normal(0, 0.15, 3000),
    }


def click_logit(df: pd.DataFrame, w: dict) -> np.ndarray:
    age, minutes = df["age"].to_numpy(float), df["time_on_site"].to_numpy(float)
    evening = np.cos(2 * np.pi * (df["hour"].to_numpy() - 20) / 24)  # +1 at 20:00, -1 at 08:00
    device = df["device"].to_numpy(object)
    return (-1.3
            + 0.9 * np.exp(-((age - 32) / 9) ** 2)                        # a bump, not a slope
            + 0.5 * np.tanh(np.log(df["salary"].to_numpy() / 50_000))     # saturates both ways
            + 0.3 * np.log1p(df["previous_spend"].to_numpy() / 100)
            - 0.25 * np.sqrt(df["items_purchased"].to_numpy())            # heavy buyers click less
            + 1.6 * np.tanh((age - 45) / 6) * np.tanh((minutes - 12) / 4)  # XOR: (old AND long) OR (young AND brief)
            + np.select([device == "phone", device == "tablet"], [0.2 + 0.6 * evening, -0.3], 0.0)
            + w["country_effect"][df["country"].str.slice(1).astype(int)]
            + w["topic_effect"][df["ad_topic"].str.slice(1).astype(int)]
            + w["city_effect"][df["city"].str.slice(1).astype(int)])


def make_clicks(rows: int, seed: int = 0, split: str = "train") -> pd.DataFrame:
    """`rows` customers of the `seed` world: the columns above, `p_click` (the truth) and `clicked` (0/1)."""
    w, rng = world(seed), np.random.default_rng([seed, SPLITS[split]])
    age = rng.integers(18, 76, rows)
    salary = np.exp(rng.normal(np.log(40_000) + 0.01 * (age - 18), 0.45))                # $ a year
    spend = np.where(rng.random(rows) < 0.3, 0.0, np.exp(rng.normal(4.5, 1.3, rows)))   # $ in the past year
    items = rng.poisson(spend / 60 + 0.2)                                                # heavy-tailed counts
    minutes = rng.gamma(2.0, 6.0, rows)                                                  # a day on the site
    city = rng.choice(3000, rows, p=w["city_p"])
    device = DEVICES[rng.choice(3, rows, p=[0.55, 0.35, 0.10])].astype(object)
    device[rng.random(rows) < 0.04] = None                                               # not recorded
    df = pd.DataFrame({
        "age": age, "salary": salary.round(2), "previous_spend": spend.round(2), "items_purchased": items,
        "time_on_site": minutes.round(2),
        "country": pd.Series(w["city_country"][city]).map("c{}".format),
        "device": device, "ad_topic": pd.Series(rng.choice(1000, rows, p=w["topic_p"])).map("t{}".format),
        "hour": rng.integers(0, 24, rows), "city": pd.Series(city).map("y{}".format),
    })
    df["p_click"] = 1 / (1 + np.exp(-click_logit(df, w)))
    df["clicked"] = (rng.random(rows) < df["p_click"]).astype(np.int64)
    return df


class ClicksDataModule(TabularDataModule):
    """`rows` generated customers: (1 - test_fraction) of them train and validate, test_fraction test."""

    def __init__(self, rows: int = 1_000_000, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 split_seed: int = 0, log_columns: list[str] | str | None = tuple(HEAVY_TAILED), **encoding) -> None:
        super().__init__(NUMERIC, CATEGORICAL, "clicked", log_columns=log_columns, **encoding)
        for name, fraction in [("val_fraction", val_fraction), ("test_fraction", test_fraction)]:
            if not 0 < fraction < 1:  # (val_fraction: a share of the rows the test split leaves)
                raise UserInputError(f"data.{name}={fraction}: give a number > 0 and < 1")
        self.rows, self.seed, self.split_seed = rows, seed, split_seed
        self.sizes = {"test": round(rows * test_fraction)}
        self.sizes["val"] = round((rows - self.sizes["test"]) * val_fraction)
        if min(self.sizes.values()) < 1 or rows - sum(self.sizes.values()) < 1:
            raise UserInputError(f"data.rows={rows} with val_fraction={val_fraction}, test_fraction={test_fraction} "
                                 "leaves a split empty: generate more rows")

    def frames(self, splits: tuple[str, ...]) -> list[pd.DataFrame]:
        if splits == ("test",):  # a stream of its own: the test rows never depend on how many rows train
            test = self.both_labels("test", make_clicks(self.sizes["test"], self.seed, "test"))
            self.test_p_click = torch.tensor(test["p_click"].to_numpy())  # the truth, for reference_metrics
            return [test]
        rows = make_clicks(self.rows - self.sizes["test"], self.seed, "train")
        train, val = split_indices(len(rows), self.sizes["val"], self.split_seed)
        return [self.both_labels(split, rows.iloc[i.numpy()]) for split, i in [("train", train), ("val", val)]]

    def both_labels(self, split: str, rows: pd.DataFrame) -> pd.DataFrame:
        """`rows`, which hold clicks and non-clicks: the AUROC of one class is undefined (0.0 and a warning)."""
        if rows["clicked"].nunique() < 2:
            raise UserInputError(f"data.rows={self.rows}: the {split} split's {one_label(len(rows))}; "
                                 "generate more rows")
        return rows

    def reference_metrics(self, batches: int | None = None) -> dict:
        """The Bayes-optimal test metrics: the test rows of the first `batches` test batches (None: every row; fewer
        under trainer.limit_test_batches) scored by their true click probability."""
        rows = None if batches is None else batches * self.eval_batch_size
        p, y = self.test_p_click[:rows], self.test[2][:rows]
        return {"data/bayes_auroc": round(float(binary_auroc(p, y)), 5),
                "data/bayes_logloss": round(float(F.binary_cross_entropy(p, y.double())), 5)}
