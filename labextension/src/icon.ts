import { LabIcon } from '@jupyterlab/ui-components';

/**
 * A stack of three ranks feeding one output: the sidebar tab's icon. The
 * `jp-icon3` class lets JupyterLab's theme pick the fill, so light and dark
 * themes both work.
 */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="2" y="3" width="13" height="4" rx="1"/>
    <rect x="2" y="10" width="13" height="4" rx="1"/>
    <rect x="2" y="17" width="13" height="4" rx="1"/>
    <path d="M16 5h2.5a1 1 0 0 1 1 1v5H22v2h-2.5v5a1 1 0 0 1-1 1H16v-2h1.5v-4H16v-2h1.5V7H16z"/>
  </g>
</svg>`;

export const lmserveIcon = new LabIcon({ name: 'lmjupyter:lmserve', svgstr });
