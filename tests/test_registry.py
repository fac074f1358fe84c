"""The registry: decorator, plugin files and modules, entry points, and the errors that guide users."""

import textwrap

import pytest
from pydantic import BaseModel

import grpopp.envs.registry as registry
from grpopp.config_tools import ConfigError
from grpopp.envs.base import EnvConfig, Environment, Task
from grpopp.envs.registry import RegistryError, list_envs, load_plugin, make_env, register_env

PLUGIN_SOURCE = '''
from grpopp.envs.base import EnvConfig, Environment, Task
from grpopp.envs.registry import register_env
from grpopp.rewards.types import VerifyResult


class EchoConfig(EnvConfig):
    word: str = "hello"
    """The word to repeat."""


@register_env("{name}")
class EchoEnv(Environment[EchoConfig]):
    """Repeat a word."""

    config_class = EchoConfig

    def num_tasks(self, split="train"):
        return 3

    def task(self, index, split="train"):
        return Task(id=self.task_id(index, split), env=self.name, split=split, index=index,
                    prompt=f"Say {{self.config.word}} {{index}}", answer=f"{{self.config.word}} {{index}}")

    def verify(self, task, completion):
        ok = completion.strip() == task.answer
        return VerifyResult(status="correct" if ok else "incorrect", score=float(ok), decided_by="echo")

    def gold_completion(self, task):
        return task.answer

    def wrong_completion(self, task):
        return task.answer + "!"
'''


pytestmark = pytest.mark.usefixtures("clean_registry")  # tests/conftest.py: plugins loaded here are forgotten


def test_builtins_are_registered():
    names = list_envs()
    for name in ("arithmetic", "countdown", "gsm8k", "math", "reasoning_gym:<task>"):
        assert name in names


def test_plugin_from_a_file(tmp_path):
    path = tmp_path / "echo_env.py"
    path.write_text(PLUGIN_SOURCE.format(name="echo_file"))
    assert load_plugin(str(path)) == ["echo_file"]
    env = make_env("echo_file", word="hi")
    task = env.task(2)
    assert task.prompt == "Say hi 2" and task.id == "echo_file/train/2"
    assert env.verify(task, "hi 2").status == "correct"


def test_plugin_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_envs_pkg.py").write_text(PLUGIN_SOURCE.format(name="echo_module"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugin("my_envs_pkg") == ["echo_module"]
    assert make_env("echo_module").task(0).answer == "hello 0"


def test_entry_point_from_an_installed_distribution(tmp_path, monkeypatch):
    # A real (if minimal) installed distribution: a dist-info folder with an entry_points.txt on sys.path.
    (tmp_path / "echo_ep_module.py").write_text(PLUGIN_SOURCE.format(name="echo_ep"))
    dist_info = tmp_path / "grpopp_echo-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: grpopp-echo\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[grpopp.envs]\necho_ep = echo_ep_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._loaded["entry_points"] = False
    assert "echo_ep" in list_envs()
    assert make_env("echo_ep").task(1).answer == "hello 1"


def test_broken_plugin_file_is_reported(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(RegistryError, match=r"broken.py' failed to import: ModuleNotFoundError"):
        load_plugin(str(path))
    with pytest.raises(RegistryError, match="no such file"):
        load_plugin(str(tmp_path / "missing.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(RegistryError, match="registered no environment"):
        load_plugin(str(empty))


def test_duplicate_name_is_refused():
    with pytest.raises(RegistryError, match="the name is taken by grpopp.envs.arithmetic.ArithmeticEnv"):

        @register_env("arithmetic")
        class Another(Environment[EnvConfig]):
            num_tasks = task = verify = gold_completion = wrong_completion = None  # type: ignore[assignment]


def test_unknown_name_suggests_the_closest():
    with pytest.raises(RegistryError, match="unknown environment 'arithmatic'. Did you mean 'arithmetic'"):
        make_env("arithmatic")


def test_config_that_is_not_pydantic_is_refused():
    class PlainConfig:
        seed = 0

    with pytest.raises(RegistryError, match="config_class must be a pydantic model"):

        @register_env("plain_config")
        class Plain(Environment[EnvConfig]):
            config_class = PlainConfig  # type: ignore[assignment]

    class NotEnvConfig(BaseModel):
        seed: int = 0

    with pytest.raises(RegistryError, match="must subclass grpopp.envs.base.EnvConfig"):

        @register_env("other_config")
        class Other(Environment[EnvConfig]):
            config_class = NotEnvConfig  # type: ignore[assignment]


def test_incomplete_environment_is_refused():
    with pytest.raises(RegistryError, match="does not implement gold_completion, verify, wrong_completion"):

        @register_env("incomplete")
        class Incomplete(Environment[EnvConfig]):
            def num_tasks(self, split="train"):
                return 1

            def task(self, index, split="train"):
                return Task(id="x", env="x", index=0, prompt="x")


def test_bad_names_are_refused():
    for name in ("has space", "with:colon", "", "1starts_with_digit"):
        with pytest.raises(RegistryError, match="a name starts with a letter"):
            register_env(name)(type("X", (), {}))


def test_bad_config_names_the_env_and_field():
    with pytest.raises(ConfigError, match="env arithmetic: max_operand: Input should be greater than or equal to 1"):
        make_env("arithmetic", max_operand=0)
    with pytest.raises(ConfigError, match="env arithmetic: unknown key 'max_opernd'. Did you mean 'max_operand'"):
        make_env("arithmetic", max_opernd=5)


def test_family_needs_a_task_name():
    with pytest.raises(RegistryError, match="name one as 'reasoning_gym:<task>'"):
        make_env("reasoning_gym")


def test_source_listing_in_plugin_is_indented_properly():
    # guard for the PLUGIN_SOURCE template itself: it must be valid Python once formatted
    compile(textwrap.dedent(PLUGIN_SOURCE.format(name="x")), "plugin", "exec")
