/** Confirmation dialogs for the panel's actions (JupyterLab's showDialog). */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { checkScale, type IWorkerBounds } from './format';

/** The scale dialog's body: a number field, the allowed range, and the last error. */
class ScaleBody extends Widget implements Dialog.IBodyWidget<string> {
  constructor(current: number, bounds: IWorkerBounds, problem: string | null) {
    super();
    this.addClass('jp-LmServe-scaleBody');
    const label = document.createElement('label');
    label.textContent = 'Workers';
    this._input = document.createElement('input');
    this._input.type = 'number';
    this._input.className = 'jp-mod-styled jp-LmServe-scaleInput';
    this._input.min = String(bounds.min);
    if (bounds.max !== null) {
      this._input.max = String(bounds.max);
    }
    this._input.step = '1';
    this._input.value = String(current);
    label.appendChild(this._input);
    this.node.appendChild(label);

    const hint = document.createElement('div');
    hint.className = 'jp-LmServe-muted';
    hint.textContent =
      bounds.max === null
        ? `At least ${bounds.min} (minWorkers). Currently ${current}.`
        : `Between ${bounds.min} and ${bounds.max} (minWorkers..maxWorkers). Currently ${current}.`;
    this.node.appendChild(hint);

    if (problem) {
      const error = document.createElement('div');
      error.className = 'jp-LmServe-error';
      error.textContent = problem;
      this.node.appendChild(error);
    }
  }

  getValue(): string {
    return this._input.value;
  }

  protected onAfterAttach(): void {
    this._input.focus();
    this._input.select();
  }

  private readonly _input: HTMLInputElement;
}

/**
 * Asks how many workers `name` should run. Resolves to the number, or null
 * when cancelled (or unchanged). Re-asks, naming the problem, on bad input.
 */
export async function askScale(
  name: string,
  current: number,
  bounds: IWorkerBounds
): Promise<number | null> {
  let problem: string | null = null;
  for (;;) {
    const result = await showDialog<string>({
      title: `Scale "${name}"`,
      body: new ScaleBody(current, bounds, problem),
      buttons: [
        Dialog.cancelButton(),
        Dialog.okButton({ label: 'Scale' })
      ],
      focusNodeSelector: 'input'
    });
    if (!result.button.accept || result.value === null) {
      return null;
    }
    const check = checkScale(result.value, bounds);
    if ('value' in check) {
      return check.value === current ? null : check.value;
    }
    problem = check.error;
  }
}

/** Asks before undeploying `name`. */
export async function confirmUndeploy(name: string): Promise<boolean> {
  const result = await showDialog({
    title: `Undeploy "${name}"?`,
    body:
      'Every worker and rank of this model ends and its queued requests fail. ' +
      'This cannot be undone; deploy it again to bring it back.',
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Undeploy' })]
  });
  return result.button.accept;
}
