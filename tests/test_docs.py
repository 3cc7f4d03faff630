"""Every relative link, repository path and command named in the README, docs/ and the config
READMEs exists: linked files and headings, files and folders, `make` targets, tools and each
option given to a tool (checked against that tool's own ``--help``)."""
import concurrent.futures
import functools
import glob
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Top-level folders of this repository: a code span starting with one names a path in it.
REPO_FOLDERS = ('cbam_mmdet', 'configs', 'docs', 'requirements', 'tests', 'tools')
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)')
CODE_SPAN = re.compile(r'`([^`\n]+)`')
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)
SHELL_LANGUAGES = {'bash', 'sh', 'shell', 'console'}
# Shell words that are not the command itself.
ENV_ASSIGNMENT = re.compile(r'^[A-Z_][A-Z0-9_]*=')
PYTHONS = {'python', 'python3', '.venv/bin/python'}


def doc_pages(root):
    """The Markdown pages to check, relative to ``root``."""
    pages = ['README.md', 'CHANGELOG.md'] + glob.glob('docs/**/*.md', root_dir=root, recursive=True)
    pages += glob.glob('configs/**/README.md', root_dir=root, recursive=True)
    return sorted(page for page in pages if osp.isfile(osp.join(root, page)))


def heading_anchors(text):
    """GitHub's anchors of a page's headings (``## A b`` -> ``a-b``; repeats get -1, -2, ...)."""
    anchors, seen = set(), {}
    for heading in re.findall(r'^#{1,6} +(.+?) *$', strip_fences(text), re.M):
        slug = re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')
        anchors.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def strip_fences(text):
    return FENCE.sub('', text)


def check_links(root, page, text):
    """Problems with the relative links of ``page`` (a path relative to ``root``)."""
    problems = []
    for target in LINK.findall(strip_fences(text)):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        resolved = osp.normpath(osp.join(osp.dirname(page), path)) if path else page
        full = osp.join(root, resolved)
        if not osp.exists(full):
            problems.append(f'{page}: link to {target}: {resolved} does not exist')
        elif anchor and resolved.endswith('.md'):
            with open(full, encoding='utf-8') as f:
                if anchor not in heading_anchors(f.read()):
                    problems.append(f'{page}: link to {target}: no heading #{anchor} in {resolved}')
    return problems


def named_paths(text):
    """Repository paths named in code spans and shell blocks (``tools/train.py``)."""
    words = CODE_SPAN.findall(strip_fences(text))
    for language, body in FENCE.findall(text):
        if language in SHELL_LANGUAGES:
            words.append(body)
    for word in words:
        for token in re.split(r'[\s=\'"(),;|]+', word):
            token = token.rstrip('.:')
            if token.startswith(tuple(f'{folder}/' for folder in REPO_FOLDERS)):
                if not is_placeholder(token):
                    yield token


def is_placeholder(path):
    """A pattern (``{a,b}``, ``*``) or a path with a placeholder part (``work_dirs/NAME/``)."""
    return bool(re.search(r'[{}*<>$]', path)) or any(
        re.fullmatch(r'[A-Z][A-Z0-9_]*', part) for part in path.split('/'))


def check_paths(root, page, text):
    return [f'{page}: names {path}, which does not exist' for path in named_paths(text)
            if not osp.exists(osp.join(root, path))]


def shell_commands(text):
    """The commands of a page: shell code blocks (joined continuation lines, no comments) and
    code spans that start like a command."""
    for language, body in FENCE.findall(text):
        if language in SHELL_LANGUAGES:
            for line in body.replace('\\\n', ' ').splitlines():
                line = re.sub(r'(^|\s)#.*$', '', line).strip()
                if line:
                    yield line
    for span in CODE_SPAN.findall(strip_fences(text)):
        if re.match(r'^(python3? tools/|\.venv/bin/python tools/|tools/\S+\.sh |mim |make )',
                    span):
            yield span


def split_command(line):
    """Shell words of ``line`` without leading VAR=value assignments; [optional] brackets and
    ``|``-separated pipelines beyond the first command are dropped."""
    line = line.split(' | ')[0].replace('[', ' ').replace(']', ' ')
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words


def flags(words):
    return [word.split('=')[0] for word in words if re.match(r'^--?[A-Za-z]', word)]


@functools.lru_cache(maxsize=None)
def help_text(*command):
    """What ``command --help`` prints (a tool of ours, one of mmdet's, ``mim train``), run from
    the repository."""
    result = subprocess.run([*command, '--help'], capture_output=True, text=True, timeout=600,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, f'{command} --help failed:\n{result.stderr[-2000:]}'
    return result.stdout


def option_names(text):
    return set(re.findall(r'(?<![\w-])(--?[A-Za-z][\w-]*)', text))


def mmdet_tool(name):
    """The path of one of mmdet's own tools (``browse_dataset``), shipped in mmdet's .mim/."""
    import mmdet
    found = glob.glob(osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', '**', f'{name}.py'),
                      recursive=True)
    return found[0] if found else None


def resolve_command(root, line):
    """What a documented command runs: ``(kind, target, args)``, where kind is 'python' (target:
    the script whose options args holds), 'make' (target: None), 'mim' (target: train or test)
    or 'missing' (target: what does not exist); None for commands of other programs (pip)."""
    words = split_command(line)
    if len(words) > 1 and words[0] in PYTHONS and words[1].endswith('.py'):
        script, args = words[1], words[2:]
    elif words and words[0].startswith('tools/') and words[0].endswith('.sh'):
        script, args = words[0], words[1:]
    elif words and words[0] == 'make':
        return 'make', None, words[1:]
    elif words[:3] == ['mim', 'run', 'mmdet'] and len(words) > 3:
        script = mmdet_tool(words[3])
        return ('python', script, words[4:]) if script else ('missing', words[3], [])
    elif words[:1] == ['mim'] and words[2:3] == ['cbam_mmdet']:
        return 'mim', words[1], words[3:]
    else:
        return None
    if not osp.isfile(osp.join(root, script)):
        return 'missing', script, []
    if script.endswith('.sh'):  # the launchers pass their options on to train.py or test.py
        script = osp.join('tools', 'test.py' if script.endswith('_test.sh') else 'train.py')
    return 'python', script, args


def help_commands(kind, target):
    """The --help commands whose options a resolved command may use."""
    if kind == 'python':
        return [(sys.executable, target)]
    if kind == 'mim' and target in ('train', 'test'):
        mim = osp.join(osp.dirname(sys.executable), 'mim')
        return [(mim, target), (sys.executable, osp.join('tools', f'{target}.py'))]
    return []


def check_command(root, page, line):
    """Problems with one documented command (only commands of this project and of mmdet's tools
    are checked; others, e.g. pip, are left alone)."""
    resolved = resolve_command(root, line)
    if resolved is None:
        return []
    kind, target, args = resolved
    if kind == 'missing':
        return [f'{page}: `{line}`: {target} does not exist']
    if kind == 'make':
        with open(osp.join(root, 'Makefile')) as f:
            targets = set(re.findall(r'^([\w-]+):', f.read(), re.M))
        return [f'{page}: `{line}`: no make target {name}' for name in args
                if not ENV_ASSIGNMENT.match(name) and name not in targets]
    problems = []
    if kind == 'mim':
        if target not in ('train', 'test'):
            return [f'{page}: `{line}`: mim {target} is not documented to work with cbam_mmdet']
        config = args[0] if args and not args[0].startswith('-') else None
        if config and not is_placeholder(config) and not osp.exists(osp.join(root, config)) \
                and not glob.glob(osp.join(root, 'configs', '**', osp.basename(config)),
                                  recursive=True):
            problems.append(f'{page}: `{line}`: no config {config}')
    known = set().union(*(option_names(help_text(*command))
                          for command in help_commands(kind, target)))
    subcommands = re.search(r'\{([\w,-]+)\}', help_text(sys.executable, target)) \
        if kind == 'python' else None
    positional = [word for word in args if not word.startswith('-')]
    if subcommands and positional and positional[0] in subcommands.group(1).split(','):
        known |= option_names(help_text(sys.executable, target, positional[0]))
    return problems + [f'{page}: `{line}`: {target} has no option {flag}' for flag in flags(args)
                       if flag not in known]


def prefetch_help(root, pages):
    """Runs every --help the pages need at once: each takes seconds (the tools import torch and
    mmdet), and they wait on different cores."""
    commands = set()
    for page in pages:
        with open(osp.join(root, page), encoding='utf-8') as f:
            for line in shell_commands(f.read()):
                resolved = resolve_command(root, line)
                if resolved:
                    commands.update(help_commands(*resolved[:2]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda command: help_text(*command), sorted(commands)))


def page_problems(root, page):
    with open(osp.join(root, page), encoding='utf-8') as f:
        text = f.read()
    problems = check_links(root, page, text) + check_paths(root, page, text)
    for line in shell_commands(text):
        problems += check_command(root, page, line)
    return problems


@pytest.fixture(scope='module')
def all_help():
    prefetch_help(REPO_ROOT, doc_pages(REPO_ROOT))


@pytest.mark.parametrize('page', doc_pages(REPO_ROOT))
def test_page_links_paths_and_commands_exist(page, all_help):
    problems = page_problems(REPO_ROOT, page)
    assert not problems, '\n'.join(problems)


def test_pages_include_readmes_and_docs():
    pages = doc_pages(REPO_ROOT)
    assert {'README.md', 'docs/tools.md', 'configs/faster_rcnn/README.md'} <= set(pages)


BROKEN_PAGE = """# A page

## A heading

See [a missing page](missing.md), [a missing heading](#no-such-heading),
[a good heading](#a-heading) and [the tools](../tools/train.py). The file `tools/not_a_tool.py`.

```bash
python tools/train.py configs/demo/faster-rcnn_r18_fpn_200i_synthetic.py --no-such-flag
tools/dist_train.sh CONFIG 2 --work-dir w --another-bad-flag
make demo no-such-target
mim train cbam_mmdet no_such_config.py --gpus 0
```
"""


def test_broken_links_paths_and_commands_are_reported(tmp_path):
    root = tmp_path / 'repo'
    (root / 'docs').mkdir(parents=True)
    for name in ('tools', 'configs'):
        os.symlink(osp.join(REPO_ROOT, name), root / name)
    (root / 'Makefile').write_text('demo:\n\techo demo\n')
    (root / 'docs' / 'page.md').write_text(BROKEN_PAGE)
    problems = '\n'.join(page_problems(str(root), 'docs/page.md'))
    for expected in ('docs/missing.md does not exist', 'no heading #no-such-heading',
                     'tools/not_a_tool.py, which does not exist', 'no option --no-such-flag',
                     'no option --another-bad-flag', 'no make target no-such-target',
                     'no config no_such_config.py'):
        assert expected in problems
    for fine in ('#a-heading', 'tools/train.py does not exist', 'option --work-dir',
                 'option --gpus'):
        assert fine not in problems


def test_model_index_lists_every_config_folder_and_config():
    import yaml
    with open(osp.join(REPO_ROOT, 'model-index.yml')) as f:
        imported = yaml.safe_load(f)['Import']
    folders = sorted(osp.dirname(path) for path in glob.glob('configs/*/*.py', root_dir=REPO_ROOT))
    assert sorted(osp.dirname(path) for path in imported) == sorted(set(folders))
    for metafile in imported:
        with open(osp.join(REPO_ROOT, metafile)) as f:
            meta = yaml.safe_load(f)
        for collection in meta['Collections']:
            assert osp.isfile(osp.join(REPO_ROOT, collection['README']))
        listed = {model['Config'] for model in meta['Models']}
        assert listed == set(glob.glob(osp.join(osp.dirname(metafile), '*.py'),
                                       root_dir=REPO_ROOT))
        assert all(model['In Collection'] in {c['Name'] for c in meta['Collections']}
                   for model in meta['Models'])
