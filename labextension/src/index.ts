/**
 * lmjupyter's JupyterLab extension: the "LM Serve" side panel.
 *
 * The panel lists the models the lmjupyter server extension serves (state,
 * version, workers, ranks, devices, queue, requests/s) and the GPU map, polls
 * `<base_url>lmserve/api/` every 2 s while visible, and scales, undeploys and
 * shows logs with confirmation. Open it from the left sidebar or with the
 * command "LM Serve: open panel".
 */
import {
  ILayoutRestorer,
  type JupyterFrontEnd,
  type JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';

import { LmServeClient } from './client';
import { lmserveIcon } from './icon';
import { LogsView } from './logs';
import { LmServePanel } from './panel';
import { jupyterTransport } from './transport';

namespace CommandIDs {
  export const open = 'lmserve:open';
  export const openLogs = 'lmserve:open-logs';
}

const PANEL_ID = 'lmserve-panel';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'lmjupyter-labextension:plugin',
  description: 'LM Serve side panel: models, workers, ranks, GPUs; scale, undeploy, logs.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const client = new LmServeClient(
      jupyterTransport(app.serviceManager.serverSettings)
    );
    const logTabs = new Map<string, MainAreaWidget<LogsView>>();

    const openLogs = (name: string): void => {
      const open = logTabs.get(name);
      if (open && !open.isDisposed) {
        app.shell.activateById(open.id);
        void open.content.refresh();
        return;
      }
      const content = new LogsView(client, name);
      const tab = new MainAreaWidget({ content });
      tab.id = `lmserve-logs-${encodeURIComponent(name)}`;
      tab.title.label = `Logs: ${name}`;
      tab.title.icon = lmserveIcon;
      tab.title.closable = true;
      tab.disposed.connect(() => logTabs.delete(name));
      logTabs.set(name, tab);
      app.shell.add(tab, 'main');
      app.shell.activateById(tab.id);
    };

    const panel = new LmServePanel({ client, openLogs });
    panel.id = PANEL_ID;
    panel.title.icon = lmserveIcon;
    panel.title.caption = 'LM Serve';
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, PANEL_ID);

    app.commands.addCommand(CommandIDs.open, {
      label: 'LM Serve: open panel',
      caption: 'Show the models lmjupyter serves, their workers and GPUs',
      icon: lmserveIcon,
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    app.commands.addCommand(CommandIDs.openLogs, {
      label: args =>
        args.name ? `LM Serve: logs of ${args.name as string}` : 'LM Serve: logs',
      execute: args => {
        if (typeof args.name === 'string' && args.name) {
          openLogs(args.name);
        }
      }
    });
    palette?.addItem({ command: CommandIDs.open, category: 'LM Serve' });
  }
};

export default plugin;
